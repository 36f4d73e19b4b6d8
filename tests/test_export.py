"""ONNX export: PyTorch parity on CPU, metadata that round-trips, an fp16 variant with fp32 norms, clear errors."""

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from conftest import HELSINKI_PBF
from onnx import TensorProto, numpy_helper

from components.core.errors import LocgenError
from components.core.onnx_io import INPUT_NAME, OUTPUT_NAME
from components.export import exporter
from components.export.exporter import ExportSettings, export, model_metadata
from components.infer.onnxmodel import read_metadata
from components.pretrained import BUNDLED_GENERATOR, BUNDLED_MODEL
from components.render.job import RenderSettings, render
from components.train.generator_file import load_generator
from locgen.cli import main

ORT_CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def plain_tiles(tmp_path_factory) -> str:
    """Three plain Helsinki tiles: the real tiles of the parity check."""
    out = str(tmp_path_factory.mktemp("plain") / "tiles")
    render(RenderSettings(osm=[str(HELSINKI_PBF)], out=out, center=(24.945, 60.168), grid=3, city="helsinki",
                          progress=False))
    return out


@pytest.fixture(scope="module")
def exported(plain_tiles, tmp_path_factory):
    """The bundled generator, exported afresh: (summary, folder)."""
    folder = tmp_path_factory.mktemp("export")
    summary = export(ExportSettings(out=str(folder / "model.onnx"), tiles=plain_tiles))
    return summary, folder


def _run(model_path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(model_path), providers=ORT_CPU).run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


@pytest.mark.parametrize("size_px", [64, 100])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnx_matches_pytorch_at_any_size_and_batch(exported, size_px, batch_size):
    _, folder = exported
    generator, _ = load_generator()
    batch = np.random.default_rng(size_px + batch_size).uniform(-1, 1, (batch_size, 3, size_px, size_px))
    batch = batch.astype(np.float32)
    with torch.no_grad():
        expected = generator(torch.from_numpy(batch)).numpy()
    generated = _run(folder / "model.onnx", batch)
    assert generated.shape == expected.shape
    assert np.abs(generated - expected).max() <= 1e-4


def test_parity_report_covers_random_and_real_tiles_and_the_fp16_dots(exported, plain_tiles):
    summary, folder = exported
    report = json.loads((folder / "model.parity.json").read_text())
    cases = {(case["input"], case["size_px"], case["batch"]) for case in report["cases"]}
    assert {("random", 64, 1), ("random", 64, 3), ("random", 256, 1), ("random", 256, 3),
            ("real tiles", 256, 3), ("real tiles", 128, 3)} <= cases
    assert report["real_tiles"] == {"uri": plain_tiles, "count": 6}
    assert report["fp32"]["max_abs_diff"] == summary["fp32_max_abs_diff"] <= 1e-4
    assert all(case["fp32"]["max_abs_diff"] <= 1e-4 for case in report["cases"])
    dots = report["fp16"]["dots"]
    assert dots["dots"] >= 6 and dots["f1"] >= 0.9 and summary["fp16_dot_f1"] == dots["f1"]
    assert report["fp32"]["dots"]["f1"] == 1.0


def test_parity_report_has_the_colour_cast_of_the_real_tiles(exported):
    summary, folder = exported
    cast = json.loads((folder / "model.parity.json").read_text())["colour_cast"]
    assert set(cast) == {"pytorch", "fp16"}
    for precision in cast.values():
        values = [precision[key] for key in ("r", "g", "b", "mean", "used_share")] + list(precision["signed"].values())
        assert all(np.isfinite(values)) and 0.9 < precision["used_share"] < 1.0  # the dots are left out
        assert precision["pixels"] / (6 * 256 * 256) == pytest.approx(precision["used_share"], abs=1e-4)
    assert summary["colour_cast_mean"] == cast["pytorch"]["mean"]
    # The bundled model on these six Helsinki tiles: 13.2 (r 12.9, g 13.3, b 13.5; signed +0.4, +2.6, +2.6),
    # and the fp16 variant 0.001 from it. A loose bound: a model that washes the map in a colour is far above.
    assert 0 < cast["pytorch"]["mean"] < 25 and abs(cast["fp16"]["mean"] - cast["pytorch"]["mean"]) < 0.1


def test_metadata_round_trips(exported):
    _, folder = exported
    _, trained = load_generator()
    expected = model_metadata(trained, "fp32")
    assert read_metadata(folder / "model.onnx") == json.loads(json.dumps(expected))
    assert expected["generator_sha256"] == hashlib.sha256(BUNDLED_GENERATOR.read_bytes()).hexdigest()
    assert expected["cities"] == ["helsinki"] and expected["m_per_px"] == 2.0 and expected["opset"] == 20
    assert expected["training_data_manifest_sha256"] == trained["data_manifest_sha256"]
    assert read_metadata(folder / "model.fp16.onnx")["precision"] == "fp16"
    model = onnx.load(folder / "model.onnx")
    assert model.opset_import[0].version == 20 and not any(t.data_location for t in model.graph.initializer)
    dims = [[dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
            for value in (*model.graph.input, *model.graph.output)]
    assert dims == [["batch", 3, "height_px", "width_px"]] * 2


def test_fp16_variant_keeps_instance_norms_in_fp32(exported):
    _, folder = exported
    model = onnx.load(folder / "model.fp16.onnx")
    produced_by = {output: node for node in model.graph.node for output in node.output}
    read_by = {}
    for node in model.graph.node:
        for name in node.input:
            read_by.setdefault(name, []).append(node)
    norms = [node for node in model.graph.node if node.op_type == "InstanceNormalization"]
    assert len(norms) == 15  # every one of the tiny generator: 1 + 2 down + 2 x 5 blocks + 2 up
    for norm in norms:
        cast_in = produced_by[norm.input[0]]
        assert cast_in.op_type == "Cast" and cast_in.attribute[0].i == TensorProto.FLOAT
        assert [node.op_type for node in read_by[norm.output[0]]] == ["Cast"]
        assert read_by[norm.output[0]][0].attribute[0].i == TensorProto.FLOAT16
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    conv_weights = [initializers[node.input[1]] for node in model.graph.node if node.op_type == "Conv"]
    assert conv_weights and all(tensor.data_type == TensorProto.FLOAT16 for tensor in conv_weights)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # fed like the fp32 model
    batch = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    assert np.abs(_run(folder / "model.fp16.onnx", batch) - _run(folder / "model.onnx", batch)).max() < 0.02


def test_bundled_onnx_model_is_the_bundled_generator():
    metadata = read_metadata(BUNDLED_MODEL)
    assert metadata["generator_sha256"] == hashlib.sha256(BUNDLED_GENERATOR.read_bytes()).hexdigest()
    generator, _ = load_generator()
    batch = np.random.default_rng(1).uniform(-1, 1, (2, 3, 128, 128)).astype(np.float32)
    with torch.no_grad():
        expected = generator(torch.from_numpy(batch)).numpy()
    assert np.abs(_run(BUNDLED_MODEL, batch) - expected).max() <= 1e-4
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(BUNDLED_MODEL).graph.initializer}
    assert sum(array.size for array in weights.values() if array.ndim == 4) >= 400_000  # the 420,227 parameters


def test_a_failed_parity_check_writes_nothing(plain_tiles, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "PARITY_TOLERANCE", 0.0)
    with pytest.raises(LocgenError, match=r"not written: the ONNX model differs from PyTorch by up to"):
        export(ExportSettings(out=str(tmp_path / "model.onnx"), tiles=plain_tiles))
    assert not list(tmp_path.iterdir())


def test_bad_inputs(plain_tiles, tmp_path, capsys):
    torch.save({"models": {}, "step": 3}, tmp_path / "last.pt")  # a training checkpoint, not a generator
    (tmp_path / "garbage.pt").write_bytes(b"not torch")
    bundled = torch.load(BUNDLED_GENERATOR, weights_only=True)
    torch.save({**bundled, "data": str(tmp_path / "gone")}, tmp_path / "moved.pt")  # its tile set is gone
    out = str(tmp_path / "out" / "model.onnx")
    cases = [
        (["--checkpoint", str(tmp_path / "last.pt"), "--out", out, "--tiles", plain_tiles], "not a generator export"),
        (["--checkpoint", str(tmp_path / "garbage.pt"), "--out", out, "--tiles", plain_tiles],
         "not a readable generator"),
        (["--out", str(tmp_path / "out" / "model.fp16.onnx"), "--tiles", plain_tiles], "a file name ending in .onnx"),
        (["--out", str(tmp_path / "out" / "model.txt"), "--tiles", plain_tiles], "a file name ending in .onnx"),
        (["--out", out, "--tiles", str(tmp_path / "nothing")], "no manifest.jsonl"),
        (["--checkpoint", str(tmp_path / "moved.pt"), "--out", out], "give --tiles URI"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(["export", *args])
        assert stop.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("locgen: error: ") and message in lines[-1], (args, lines[-1])
    assert not (tmp_path / "out").exists()
