"""The export stage as one call: a trained generator -> ONNX models checked against PyTorch.

`locgen export --checkpoint generator.pt --out MODEL.onnx` writes three files side by side:

- MODEL.onnx: fp32, dynamic batch, height and width (sides multiples of 4, at least 8 px), opset 20,
  one self-contained file, made by the dynamo exporter (torch.onnx.export(dynamo=True), which
  needs onnxscript), with its instance norms as exact plain ops (`TwoLevelInstanceNorm`); its
  metadata says what it was trained on (see `model_metadata`);
- MODEL.fp16.onnx: the variant TensorRT runs, made by `to_fp16` (native InstanceNormalization in fp32);
- MODEL.parity.json: how far ONNX Runtime's output is from PyTorch's, on random inputs and real
  tiles at several sizes and batch sizes, whether the fp16 variant paints the same dots, and the
  colour cast of PyTorch's and the fp16 variant's tiles (a health signal: the map's colours away
  from the dots should stay as they were; `components.core.colour`).

The export fails, and publishes nothing, when fp32 differs from PyTorch by more than 1e-4 or the
fp16 variant misses dots. The model is published last: where MODEL.onnx exists, the rest does too.
"""

from __future__ import annotations

import json
from copy import deepcopy

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript
import torch
from torch import nn

from components import __version__
from components.core.colour import colour_cast
from components.core.errors import LocgenError
from components.core.matching import dot_agreement
from components.core.onnx_io import (
    FP16_SUFFIX,
    INPUT_NAME,
    OUTPUT_NAME,
    PARITY_SUFFIX,
    PROVIDERS,
    check_tile_size,
    to_model_input,
    to_tiles,
)
from components.core.provenance import OSM_ATTRIBUTION
from components.core.storage import open_file_uri, open_store
from components.core.tileset import decode_tile, fetch_all, plain_rows
from components.export.fp16 import to_fp16
from components.export.settings import ExportSettings
from components.train.generator_file import load_generator
from components.train.networks import MIN_SIZE_PX, SIZE_MULTIPLE, Generator

OPSET = 20
MAX_SIDE_PX = 4096  # the largest side the dynamic shapes admit
PROTOBUF_LIMIT_BYTES = 2**31  # one self-contained .onnx file cannot be larger
PARITY_TOLERANCE = 1e-4  # largest |ONNX fp32 - PyTorch| allowed on outputs in [-1, 1]
FP16_MIN_DOT_F1 = 0.9  # the fp16 variant must find at least this share of PyTorch's dots (F1)
RANDOM_SIZE_PX = 64  # random inputs at this size and at the training size
BATCH_SIZES = (1, 3)
REAL_TILES = 6  # plain tiles spread through the tile set


def export(settings: ExportSettings) -> dict:
    """Export, check and publish the models and the parity report; returns a summary."""
    out_store, model_key = open_file_uri(settings.out)
    if not model_key.endswith(".onnx") or model_key.endswith(FP16_SUFFIX):
        raise LocgenError(f"--out {settings.out}: give a file name ending in .onnx (not {FP16_SUFFIX}); "
                          f"the fp16 variant and the parity report are written beside it")
    generator, trained = load_generator(settings.checkpoint)
    tiles_uri = settings.tiles or _first_training_set(trained["data"])
    tiles = _real_tiles(tiles_uri, settings.tiles is None)
    model = to_onnx(with_exact_norms(generator), model_metadata(trained, "fp32"))
    # TensorRT gets the native InstanceNormalization (its own normalisation layer), kept in fp32.
    fp16_model = to_fp16(to_onnx(generator, model_metadata(trained, "fp16")))
    report = parity_report(generator, model, fp16_model, tiles, trained["size_px"], settings.seed)
    report["real_tiles"] = {"uri": tiles_uri, "count": len(tiles)}
    _check(report, settings.out)
    stem = model_key.removesuffix(".onnx")
    out_store.publish_bytes(stem + FP16_SUFFIX, _serialised(fp16_model))
    out_store.publish_bytes(stem + PARITY_SUFFIX, json.dumps(report, indent=2).encode(), "application/json")
    out_store.publish_bytes(model_key, _serialised(model))
    return {"model": settings.out, "fp16_model": out_store.url(stem + FP16_SUFFIX),
            "parity_report": out_store.url(stem + PARITY_SUFFIX), "opset": OPSET,
            "fp32_max_abs_diff": report["fp32"]["max_abs_diff"], "fp16_dot_f1": report["fp16"]["dots"]["f1"],
            "colour_cast_mean": report["colour_cast"]["pytorch"]["mean"]}


def to_onnx(generator: Generator, metadata: dict) -> onnx.ModelProto:
    """The generator as an fp32 ONNX model with dynamic batch, height and width, and `metadata`."""
    batch = torch.export.Dim("batch", min=1)
    # Sides are multiples of 4 (two downsamplings by 2), stated to the exporter as 4 x a whole number.
    height = torch.export.Dim("height_div_4", min=MIN_SIZE_PX // SIZE_MULTIPLE, max=MAX_SIDE_PX // SIZE_MULTIPLE)
    width = torch.export.Dim("width_div_4", min=MIN_SIZE_PX // SIZE_MULTIPLE, max=MAX_SIDE_PX // SIZE_MULTIPLE)
    example = torch.zeros(2, 3, 4 * SIZE_MULTIPLE, 4 * SIZE_MULTIPLE)
    program = torch.onnx.export(generator.eval(), (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes={"x": {0: batch, 2: SIZE_MULTIPLE * height,
                                                      3: SIZE_MULTIPLE * width}})
    model = program.model_proto
    for node in model.graph.node:  # the exporter's stack traces name this machine's paths and source lines
        kept = [entry for entry in node.metadata_props if entry.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    for value in (*model.graph.input, *model.graph.output):  # readable names for the dynamic sides
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height_px", "width_px"
    for key, value in metadata.items():  # JSON values: read_metadata decodes them
        model.metadata_props.add(key=key, value=json.dumps(value))
    return model


class TwoLevelInstanceNorm(nn.Module):
    """Instance norm (no affine parameters) as ONNX Runtime computes it as exactly as PyTorch does.

    ONNX Runtime's InstanceNormalization, and a single ReduceMean over a whole feature map, sum its
    65,536 values (256 px) one after another in fp32: on map tiles, whose large even areas leave
    some channels nearly constant, dividing by their small deviation magnifies that rounding to 2e-3
    at the output (measured on the bundled generator, against PyTorch and float64). Means over rows,
    then over the row means (256 values each), keep it under 1e-4; the two-pass variance avoids
    E[x^2] - E[x]^2 cancelling. The same mathematics as nn.InstanceNorm2d, exported as plain ops.
    """

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    @staticmethod
    def _mean(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)  # equal rows: the mean of row means

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self._mean(x)
        return centred / torch.sqrt(self._mean(centred * centred) + self.eps)


def with_exact_norms(generator: Generator) -> Generator:
    """A copy of the generator whose instance norms are TwoLevelInstanceNorm: for the fp32 model."""
    copy = deepcopy(generator)
    for name, module in list(copy.named_modules()):
        if isinstance(module, nn.InstanceNorm2d):
            if module.affine or module.track_running_stats:
                raise ValueError(f"{name}: instance norm with parameters or running statistics; not a CUT generator")
            parent, _, child = name.rpartition(".")
            setattr(copy.get_submodule(parent), child, TwoLevelInstanceNorm(module.eps))
    return copy


def model_metadata(trained: dict, precision: str) -> dict:
    """What a model says about itself: how to feed it, what it was trained on, where it came from."""
    return {
        "locgen_version": __version__,
        "exporter": f"torch.onnx.export(dynamo=True): torch {torch.__version__}, onnxscript {onnxscript.__version__}",
        "opset": OPSET,
        "precision": precision,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "input_normalisation": trained["input_normalisation"],
        "output_normalisation": "rgb = (generated + 1) * 127.5",
        "size_multiple_px": SIZE_MULTIPLE,
        "min_size_px": MIN_SIZE_PX,
        "size_px": trained["size_px"],
        "m_per_px": trained["m_per_px"],
        "marker_radius_px": trained["marker_radius_px"],
        "style_version": trained["style_version"],
        "style_sha256": trained["style_sha256"],
        "cities": trained["cities"],
        "training_data": trained["data"],
        "training_data_manifest_sha256": trained["data_manifest_sha256"],
        "generator": trained["uri"],
        "generator_sha256": trained["sha256"],
        "trained_with_locgen": trained["locgen_version"],
        "ngf": trained["ngf"],
        "n_blocks": trained["n_blocks"],
        "validation": trained["validation"],
        "attribution": OSM_ATTRIBUTION,  # the weights were learnt from OpenStreetMap tiles (ODbL)
    }


def parity_report(generator: Generator, model: onnx.ModelProto, fp16_model: onnx.ModelProto, tiles: np.ndarray,
                  size_px: int, seed: int) -> dict:
    """Compare ONNX Runtime (fp32 and fp16, on the CPU) with PyTorch fp32 on random inputs and real tiles.

    tiles: uint8 (N, H, W, 3) plain tiles; they run at full size and centre-cropped to half size. The
    full-size ones also give the colour cast of PyTorch's and the fp16 variant's tiles (`colour_cast`).
    """
    sessions = {precision: ort.InferenceSession(_serialised(proto), providers=[PROVIDERS["cpu"]])
                for precision, proto in (("fp32", model), ("fp16", fp16_model))}
    cases, outputs = [], {"pytorch": [], "fp32": [], "fp16": []}
    for kind, size, batch in _parity_inputs(tiles, size_px, seed):
        with torch.no_grad():
            reference = generator(torch.from_numpy(batch)).numpy()
        case = {"input": kind, "batch": len(batch), "size_px": size}
        for precision, session in sessions.items():
            generated = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
            difference = np.abs(generated - reference)
            case[precision] = {"max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean())}
            if kind == "real tiles" and size == tiles.shape[1]:
                outputs[precision].extend(to_tiles(generated))
        if kind == "real tiles" and size == tiles.shape[1]:
            outputs["pytorch"].extend(to_tiles(reference))
        cases.append(case)
    report = {"tolerance": PARITY_TOLERANCE, "fp16_min_dot_f1": FP16_MIN_DOT_F1, "provider": PROVIDERS["cpu"],
              "onnxruntime": ort.__version__, "torch": torch.__version__}
    for precision in sessions:
        report[precision] = {
            "max_abs_diff": max(case[precision]["max_abs_diff"] for case in cases),
            "mean_abs_diff": float(np.mean([case[precision]["mean_abs_diff"] for case in cases])),
            "dots": dot_agreement(outputs["pytorch"], outputs[precision]).as_dict(),
        }
    # On the real tiles at full size, against their plain tiles (the order they ran in).
    report["colour_cast"] = {precision: colour_cast(tiles, np.stack(outputs[precision])).as_dict()
                             for precision in ("pytorch", "fp16")}
    report["cases"] = cases
    return report


def _parity_inputs(tiles: np.ndarray, size_px: int, seed: int):
    """(kind, size_px, float32 batch) for every parity case."""
    rng = np.random.default_rng(seed)
    for size in sorted({RANDOM_SIZE_PX, size_px}):
        for batch in BATCH_SIZES:
            yield "random", size, rng.uniform(-1.0, 1.0, (batch, 3, size, size)).astype(np.float32)
    side = tiles.shape[1]
    half = side // 2 - side // 2 % SIZE_MULTIPLE
    for size in (side, half):
        top = (side - size) // 2
        crops = to_model_input(tiles[:, top:top + size, top:top + size])
        for start in range(0, len(crops), max(BATCH_SIZES)):
            yield "real tiles", size, crops[start:start + max(BATCH_SIZES)]


def _check(report: dict, out: str) -> None:
    worst = report["fp32"]["max_abs_diff"]
    if worst > PARITY_TOLERANCE:
        raise LocgenError(f"--out {out}: not written: the ONNX model differs from PyTorch by up to {worst:.2e} "
                          f"(more than {PARITY_TOLERANCE:g}); report this with the checkpoint, torch and onnxscript "
                          "versions")
    dots = report["fp16"]["dots"]
    if dots["f1"] < FP16_MIN_DOT_F1:
        raise LocgenError(f"--out {out}: not written: the fp16 variant finds {dots['other_dots']} dots where PyTorch "
                          f"finds {dots['dots']} ({dots['matched']} the same; F1 {dots['f1']} < {FP16_MIN_DOT_F1}); "
                          "report this with the checkpoint")


def _real_tiles(uri: str, from_training: bool) -> np.ndarray:
    """REAL_TILES plain tiles spread through the tile set, as uint8 (N, H, W, 3)."""
    option = "--tiles"
    try:
        store = open_store(uri)
        rows = plain_rows(store, option)
    except LocgenError as error:
        if not from_training:
            raise
        raise LocgenError(f"--tiles: the parity check needs real tiles, and the generator's training tile set "
                          f"cannot be read ({error}); give --tiles URI, any tile set locgen render wrote") from None
    picked = [rows[index] for index in sorted(set(np.linspace(0, len(rows) - 1, REAL_TILES).round().astype(int)))]
    keys = [row["path"] for row in picked]
    tiles = np.stack([decode_tile(png, store.url(row["path"]), row)
                      for row, png in zip(picked, fetch_all(store, keys))])
    check_tile_size(tiles.shape[1], tiles.shape[2], SIZE_MULTIPLE, MIN_SIZE_PX, f"{option} {uri}")
    return tiles


def _serialised(model: onnx.ModelProto) -> bytes:
    data = model.SerializeToString()
    if len(data) >= PROTOBUF_LIMIT_BYTES:  # a 9-block ngf-64 generator is 45 MB: only a far larger one gets here
        raise LocgenError(f"the ONNX model is {len(data) / 2**30:.1f} GiB: over the 2 GiB of one self-contained "
                          "file; train a smaller generator (ngf, n_blocks)")
    return data


def _first_training_set(data: str | list[str]) -> str:
    """The tile set the parity check reads by default: the (first) one the generator was trained on
    (a generator.pt of locgen 0.1 before several training sets, the bundled one among them, names one)."""
    return data if isinstance(data, str) else data[0]
