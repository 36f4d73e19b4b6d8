"""The fp16 variant of an exported generator, for TensorRT: fp16 convolutions, fp32 where fp16 goes wrong.

TensorRT with fp16 enabled may run any layer in fp16. Instance norm in fp16 is a known source of
wrong output there (its variance over a whole 256 x 256 feature map loses precision and can
overflow), so the precision is written into the model instead of left to the builder:

- every InstanceNormalization computes in fp32, between explicit Casts (its scale and bias stay fp32);
- Resize stays fp32 too: its `scales` input must be float32, and bilinear upsampling is cheap;
- the convolutions, their weights and the activations in between are fp16;
- the model's input and output stay float32, so callers feed it exactly like the fp32 model.

A small converter of our own rather than onnxruntime.transformers.float16 or onnxconverter-common:
both produced invalid graphs for this model (a Cast repeated under one name for an initializer that
two fp32 nodes share; nodes out of topological order; an fp16 `scales` input to Resize).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP32_OPS = {"InstanceNormalization", "Resize"}


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with fp16 weights and activations, except in FP32_OPS; checked by onnx's checker."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    _convert_initializers(graph)
    renamed = {name: f"{name}_fp16" for name in _float_inputs(graph)}
    nodes = [_cast(name, fp16_name, TensorProto.FLOAT16) for name, fp16_name in renamed.items()]
    for node in graph.node:
        _rename_inputs(node, renamed)
        if node.op_type in FP32_OPS:
            nodes += _in_fp32(node)
        else:
            nodes.append(node)
    for output in graph.output:  # the last node writes an fp16 twin, cast back to the float32 output
        if output.type.tensor_type.elem_type == TensorProto.FLOAT:
            producer = next(node for node in nodes if output.name in node.output)
            producer.output[list(producer.output).index(output.name)] = f"{output.name}_fp16"
            nodes.append(_cast(f"{output.name}_fp16", output.name, TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # the intermediate types changed; shape inference recomputes them
    onnx.checker.check_model(converted, full_check=True)  # strict type inference: a mixed-type node fails here
    return converted


def _float_inputs(graph: onnx.GraphProto) -> list[str]:
    return [value.name for value in graph.input if value.type.tensor_type.elem_type == TensorProto.FLOAT]


def _convert_initializers(graph: onnx.GraphProto) -> None:
    """Float initializers to fp16, except those that only fp32 nodes read."""
    readers: dict[str, set[bool]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type in FP32_OPS)
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type != TensorProto.FLOAT:
            continue
        kinds = readers.get(tensor.name, set())
        if kinds == {True, False}:
            raise ValueError(f"initializer {tensor.name} is read by fp32 and fp16 nodes; duplicate it before "
                             "converting")
        if kinds == {False}:
            values = numpy_helper.to_array(tensor).astype(np.float16)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))


def _rename_inputs(node: onnx.NodeProto, renamed: dict[str, str]) -> None:
    for position, name in enumerate(node.input):
        if name in renamed:
            node.input[position] = renamed[name]


def _in_fp32(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The node computing in fp32: its data input (the first) cast up, its outputs cast back down."""
    data = node.input[0]
    node.input[0] = f"{data}_to_fp32_for_{node.name}"
    nodes = [_cast(data, node.input[0], TensorProto.FLOAT), node]
    for position, name in enumerate(node.output):
        node.output[position] = f"{name}_fp32"
        nodes.append(_cast(node.output[position], name, TensorProto.FLOAT16))
    return nodes


def _cast(source: str, target: str, to: int) -> onnx.NodeProto:
    return helper.make_node("Cast", [source], [target], name=f"cast_{target}", to=to)
