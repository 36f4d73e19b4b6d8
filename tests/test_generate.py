"""Inference with ONNX Runtime: exact georeference carried over, the provider it really runs on, resume, errors."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KOTKA_PBF
from s3server import unique_prefix

from components.core.colour import colour_cast
from components.core.errors import LocgenError
from components.core.matching import dot_agreement
from components.core.pngmeta import read_png_text
from components.core.storage import open_store
from components.core.tileset import GEOREF_TEXT_KEY, MANIFEST_KEY, decode_tile, read_manifest
from components.extract.job import ExtractSettings, extract
from components.infer.job import generate
from components.infer.settings import GenerateSettings
from components.pretrained import BUNDLED_MODEL
from components.render.job import RenderSettings, render
from components.train.generator_file import load_generator
from components.train.validation import translate
from locgen.cli import main

GEOREFERENCE = ("id", "city", "crs", "size_px", "m_per_px", "mpp_3857", "bounds_3857", "bounds_lonlat",
                "style_version", "style_sha256")


def _render(out, **changes) -> str:
    """A 3 x 3 grid of plain Kotka tiles (a town the bundled model never saw)."""
    settings = dict(osm=[str(KOTKA_PBF)], out=str(out), center=(26.95, 60.53), grid=3, city="kotka", progress=False)
    render(RenderSettings(**{**settings, **changes}))
    return str(out)


@pytest.fixture(scope="module")
def kotka(tmp_path_factory) -> str:
    return _render(tmp_path_factory.mktemp("kotka") / "plain")


@pytest.fixture(scope="module")
def generated(kotka, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("generated") / "tiles")
    summary = generate(GenerateSettings(tiles=kotka, out=out, batch_size=4, progress=False))
    return summary, out


def _tiles(store, rows) -> np.ndarray:
    return np.stack([decode_tile(store.get_bytes(row["path"]), row["path"], row) for row in rows])


def test_generated_tiles_keep_the_exact_georeference_of_their_inputs(kotka, generated):
    summary, out = generated
    plain_rows = read_manifest(open_store(kotka))
    out_store = open_store(out)
    rows = read_manifest(out_store)
    assert summary["tiles"] == summary["generated"] == len(rows) == len(plain_rows) == 9
    for plain, row in zip(plain_rows, rows):
        assert {key: row[key] for key in GEOREFERENCE} == {key: plain[key] for key in GEOREFERENCE}
        assert row["domain"] == "a" and row["generated_from"] == plain["path"]
        assert row["sources"][-1] == {"uri": "bundled:tiny-helsinki.onnx", "kind": "onnx-model",
                                      "sha256": summary["model_sha256"]}
        chunk = json.loads(read_png_text(out_store.get_bytes(row["path"]))[GEOREF_TEXT_KEY])
        assert {key: chunk[key] for key in GEOREFERENCE} == {key: plain[key] for key in GEOREFERENCE}
        assert chunk["domain"] == "a" and chunk["inputs_sha256"] == row["inputs_sha256"]


def test_onnx_runtime_paints_the_dots_pytorch_paints(kotka, generated):
    _, out = generated
    plain = _tiles(open_store(kotka), read_manifest(open_store(kotka)))
    onnx_tiles = _tiles(open_store(out), read_manifest(open_store(out)))
    generator, _ = load_generator()
    pytorch_tiles = translate(generator, torch.from_numpy(plain).permute(0, 3, 1, 2), torch.device("cpu"))
    assert np.abs(onnx_tiles.astype(int) - pytorch_tiles).max() <= 1  # rounding of outputs 1e-4 apart
    agreement = dot_agreement(pytorch_tiles, onnx_tiles)
    assert agreement.dots >= 9 and agreement.f1 == 1.0


def test_the_summary_has_the_colour_cast_of_the_tiles_translated(kotka, generated):
    summary, out = generated
    plain = _tiles(open_store(kotka), read_manifest(open_store(kotka)))
    tiles = _tiles(open_store(out), read_manifest(open_store(out)))
    cast = summary["colour_cast"]
    assert cast == colour_cast(plain, tiles).as_dict()  # batch by batch, on the upload threads: the same sums
    values = [cast[key] for key in ("r", "g", "b", "mean", "used_share")] + list(cast["signed"].values())
    assert all(np.isfinite(values)) and 0.9 < cast["used_share"] < 1.0 and summary["colour_cast_mean"] == cast["mean"]
    # The bundled model on these nine Kotka tiles (a town it never saw): 18.7, darker (signed r -15.5,
    # g -12.8, b -13.8); on a 5 x 5 Helsinki grid 8.8. A loose bound: a colour wash is far above.
    assert 0 < summary["colour_cast_mean"] < 25


def test_points_extracted_from_generated_tiles_lie_in_their_tiles(generated, tmp_path):
    _, out = generated
    summary = extract(ExtractSettings(tiles=out, out=[str(tmp_path / "points.geojson")], progress=False))
    features = json.loads((tmp_path / "points.geojson").read_text())["features"]
    assert summary["points"] == len(features) >= 9
    rows = read_manifest(open_store(out))
    west, south = min(row["bounds_lonlat"][0] for row in rows), min(row["bounds_lonlat"][1] for row in rows)
    east, north = max(row["bounds_lonlat"][2] for row in rows), max(row["bounds_lonlat"][3] for row in rows)
    for feature in features:
        lon, lat = feature["geometry"]["coordinates"]
        assert west <= lon <= east and south <= lat <= north


def test_auto_runs_on_the_cpu_here_and_says_so(kotka, tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="components"):
        assert main(["generate", "--tiles", kotka, "--out", str(tmp_path / "auto"), "--batch-size", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["provider"] == "CPUExecutionProvider" and summary["generated"] == 9
    assert any("running tiny-helsinki.onnx on CPUExecutionProvider (--provider auto; skipped tensorrt" in message
               for message in caplog.messages)


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_gpu_provider_that_cannot_run_is_a_clear_error(kotka, tmp_path, capsys, provider):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: this checks a CPU-only environment")
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--tiles", kotka, "--out", str(tmp_path / "gpu"), "--provider", provider])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"locgen: error: --provider {provider}: this onnxruntime has no ")
    assert "install onnxruntime-gpu" in line and "--provider cpu" in line
    assert not (tmp_path / "gpu").exists()  # nothing ran on the CPU instead


def _has_gpu_runtime() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(not _has_gpu_runtime(), reason="needs onnxruntime-gpu and an NVIDIA GPU")
@pytest.mark.parametrize("provider, provider_name, least_f1", [("cuda", "CUDAExecutionProvider", 0.98),
                                                               ("tensorrt", "TensorrtExecutionProvider", 0.9)])
def test_gpu_providers_paint_the_dots_of_the_cpu(kotka, generated, tmp_path, provider, provider_name, least_f1):
    _, on_cpu = generated
    runs = []
    for attempt in ("build", "cached"):  # TensorRT builds its engine once, then loads it from the cache
        out = str(tmp_path / attempt)
        summary = generate(GenerateSettings(tiles=kotka, out=out, provider=provider, batch_size=4,
                                            cache_dir=tmp_path / "cache", progress=False))
        assert summary["provider"] == provider_name and summary["generated"] == 9
        runs.append(sorted(path.stat().st_mtime_ns for path in (tmp_path / "cache").rglob("*") if path.is_file()))
    assert runs[0] == runs[1]  # nothing rebuilt
    if provider == "tensorrt":
        assert summary["model_file_run"] == "tiny-helsinki.fp16.onnx" and runs[0]
    cpu_tiles = _tiles(open_store(on_cpu), read_manifest(open_store(on_cpu)))
    gpu_tiles = _tiles(open_store(out), read_manifest(open_store(out)))
    agreement = dot_agreement(cpu_tiles, gpu_tiles)
    assert agreement.dots >= 9 and agreement.f1 >= least_f1


def test_a_rerun_skips_the_tiles_already_generated(kotka, generated, tmp_path):
    _, first = generated
    out = tmp_path / "again"
    shutil.copytree(first, out)
    rows = read_manifest(open_store(str(out)))
    (out / MANIFEST_KEY).unlink()  # as if stopped before publishing, with two tiles not yet written
    for row in rows[:2]:
        (out / row["path"]).unlink()
    summary = generate(GenerateSettings(tiles=kotka, out=str(out), progress=False))
    assert (summary["generated"], summary["skipped"]) == (2, 7)
    plain = _tiles(open_store(kotka), read_manifest(open_store(kotka))[:2])
    assert summary["colour_cast"] == colour_cast(plain, _tiles(open_store(str(out)), rows[:2])).as_dict()
    again = generate(GenerateSettings(tiles=kotka, out=str(out), progress=False))  # nothing left to translate
    assert again["generated"] == 0 and again["colour_cast_mean"] is None and again["colour_cast"]["pixels"] == 0
    assert read_manifest(open_store(str(out))) == rows
    for row in rows:
        assert (out / row["path"]).read_bytes() == (open_store(first).get_bytes(row["path"]))


def test_s3_tiles_model_and_output(kotka, s3_env, tmp_path):
    prefix = f"s3://{s3_env.bucket}/{unique_prefix()}"
    tiles = open_store(f"{prefix}/kotka")
    local = open_store(kotka)
    for key in local.list_keys():
        tiles.put_bytes(key, local.get_bytes(key))
    models = open_store(f"{prefix}/models")
    for suffix in (".onnx", ".fp16.onnx"):
        models.put_bytes(f"tiny{suffix}", BUNDLED_MODEL.with_name(f"tiny-helsinki{suffix}").read_bytes())
    summary = generate(GenerateSettings(tiles=f"{prefix}/kotka", out=f"{prefix}/generated",
                                        model=f"{prefix}/models/tiny.onnx", cache_dir=tmp_path, progress=False))
    assert summary["generated"] == 9 and summary["model"] == f"{prefix}/models/tiny.onnx"
    downloaded = sorted(path.name for path in (tmp_path / "models").rglob("*.onnx"))
    assert downloaded == ["tiny.fp16.onnx", "tiny.onnx"]  # the fp16 variant travels with it, for TensorRT
    rows = read_manifest(open_store(f"{prefix}/generated"))
    assert len(rows) == 9 and all(row["sources"][-1]["uri"] == f"{prefix}/models/tiny.onnx" for row in rows)


def test_bad_inputs(kotka, generated, tmp_path):
    def fails(message: str, **settings) -> None:
        out = tmp_path / "out"
        with pytest.raises(LocgenError, match=message):
            generate(GenerateSettings(**{"tiles": kotka, "out": str(out), "progress": False, **settings}))
        assert not out.exists()

    odd = _render(tmp_path / "odd", grid=1, size_px=250)
    fails(r"tiles of 250x250 px; the model takes sides that are multiples of 4 px of at least 8 px "
          r"\(e\.g\. 248 or 252\)", tiles=odd)
    coarse = _render(tmp_path / "coarse", grid=1, m_per_px=4.0)
    fails(r"tiles at 4 m/px, but the model learnt at 2 m/px .* render the tiles with --m-per-px 2", tiles=coarse)
    fails("no plain \\(domain b\\) tiles", tiles=generated[1])
    fails("no manifest.jsonl", tiles=str(tmp_path / "nothing"))
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    fails("ONNX Runtime cannot load it", model=str(tmp_path / "broken.onnx"))
    fails("give the .onnx file that locgen export wrote", model=str(tmp_path / "model.pt"))
    fails("no such file", model=str(tmp_path / "missing.onnx"))
    fails("--batch-size 0: give a whole number of at least 1", batch_size=0)


def test_the_generated_tiles_never_replace_the_tiles_they_come_from(kotka):
    manifest = (Path(kotka) / MANIFEST_KEY).read_bytes()
    for out in (kotka, f"{kotka}/", str(Path(kotka) / ".")):
        with pytest.raises(LocgenError) as raised:
            generate(GenerateSettings(tiles=kotka, out=out, progress=False))
        assert str(raised.value) == (f"--out {out}: is the tile set of --tiles; give the generated tiles a folder of "
                                     "their own")
    assert (Path(kotka) / MANIFEST_KEY).read_bytes() == manifest


def test_generated_tiles_never_replace_another_tile_set(kotka, generated, tmp_path):
    other = _render(tmp_path / "other", grid=2)
    _, first = generated
    kept = {out: (Path(out) / MANIFEST_KEY).read_bytes() for out in (other, first)}
    with pytest.raises(LocgenError) as raised:
        generate(GenerateSettings(tiles=kotka, out=other, progress=False))
    assert str(raised.value) == (f"--out {other}: holds another tile set (written by render); give another --out, "
                                 "or --overwrite to replace it (the tiles they share are reused)")
    with pytest.raises(LocgenError) as raised:
        generate(GenerateSettings(tiles=other, out=first, progress=False))
    assert str(raised.value) == (f"--out {first}: holds another tile set (generate of other tiles); give another "
                                 "--out, or --overwrite to replace it (the tiles they share are reused)")
    assert {out: (Path(out) / MANIFEST_KEY).read_bytes() for out in (other, first)} == kept
    replaced = generate(GenerateSettings(tiles=kotka, out=other, progress=False, overwrite=True))  # as asked
    assert replaced["tiles"] == 9 and read_manifest(open_store(other)) == read_manifest(open_store(first))
