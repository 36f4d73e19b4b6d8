"""Bad command lines and bad values: each ends with one line `locgen: error: ...` that names the input and
the fix, exit status 2, and nothing written."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import HELSINKI_PBF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from s3server import refusing_port

from components.core.errors import LocgenError, redacted
from components.core.geo import LonLatBounds, lonlat_from_3857, mercator_scale
from components.core.pngmeta import encode_png
from components.core.settings import declared
from components.core.storage import open_store
from components.core.tileset import (
    MANIFEST_KEY,
    PLAN_KEY,
    check_claim,
    claim,
    decode_tile,
    parse_manifest,
    tileset_plan,
)
from components.export.settings import ExportSettings
from components.extract.evaluate import EvaluateSettings, FitBaselineSettings
from components.extract.job import ExtractSettings
from components.infer.settings import GenerateSettings
from components.render.job import RenderSettings
from components.train.config import TRAIN_VALUES, preset_config
from locgen.cli import build_parser, main

PROGRESS = re.compile(r"[\w ]+: +\d+%\||locgen: [\w ]+: \d+/\d+ \w+s \(\d+%\)")  # a bar, or a plain line
CHICAGO = "-87.64,41.88,-87.62,41.89"  # west of Greenwich
CAPE_TOWN = "-33.9,18.4"  # south of the equator, LAT,LON


def _fails(capsys, tmp_path, *argv: str) -> str:
    """The one stderr line of a command that must fail with exit 2 and write nothing (under tmp_path, where only
    tmp_path/in may hold its input)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    # what stderr says besides its progress bars (tqdm's "extract:   0%|...", redrawn with carriage returns)
    lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line and not PROGRESS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("locgen: error: "), lines
    assert {path.name for path in tmp_path.iterdir()} <= {"in"}
    return lines[0].removeprefix("locgen: error: ")


# --- negative coordinates ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, name, expected", [
    (["render", "--osm", "x.pbf", "--out", "o", "--bbox", CHICAGO], "bbox", LonLatBounds(-87.64, 41.88, -87.62, 41.89)),
    (["render", "--osm", "x.pbf", "--out", "o", "--center", CAPE_TOWN, "--grid", "2"], "center", (18.4, -33.9)),
    (["render", "--osm", "x.pbf", "--out", "o", "--pairs", "2", "--holdout", CHICAGO], "holdout",
     LonLatBounds(-87.64, 41.88, -87.62, 41.89)),
    (["evaluate", "--generated", "g.csv", "--truth", "t.csv", "--out", "r.json", "--bbox", CHICAGO], "bbox",
     LonLatBounds(-87.64, 41.88, -87.62, 41.89)),
    (["render", "--osm", "x.pbf", "--out", "o", "--bbox", "-0.1,51.5,0.1,51.6"], "bbox",
     LonLatBounds(-0.1, 51.5, 0.1, 51.6)),
])
def test_an_area_west_of_greenwich_or_south_of_the_equator_is_read_as_given(argv, name, expected):
    assert getattr(build_parser().parse_args(argv), name) == expected


def test_a_negative_value_still_reads_with_an_equals_sign_and_as_a_plain_number():
    args = build_parser().parse_args(["render", "--osm", "x.pbf", "--out", "o", f"--bbox={CHICAGO}", "--seed", "-1"])
    assert args.bbox == LonLatBounds(-87.64, 41.88, -87.62, 41.89) and args.seed == -1


# --- options are spelt out whole -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["submit", "--host", "http://127.0.0.1:9", "--token", "s3cr3t-t0ken"],
     "unknown options --token (values not shown); see `locgen submit --help` for what it takes"),
    (["submit", "--host", "http://127.0.0.1:9", "--token=s3cr3t-t0ken"],
     "unknown options --token (values not shown); see `locgen submit --help` for what it takes"),
    (["render", "--osm", "x.pbf", "--out", "out", "--m-per", "2"],
     "unknown options --m-per (values not shown); see `locgen render --help` for what it takes"),
    (["train", "--data", "d", "--out", "out", "--resume-if"],
     "unknown options --resume-if (values not shown); see `locgen train --help` for what it takes"),
    (["extract", "--tiles", "t", "--out", "out.csv", "s3cr3t-t0ken"],
     "1 unexpected value (values not shown); see `locgen extract --help` for what it takes"),
    (["render", "--osm", "x.pbf", "--out", "out", "--size-px", "abc"],
     "render: argument --size-px: invalid int value: 'abc'"),
    (["render", "--osm", "x.pbf", "--out", "out", "--bbox"], "render: argument --bbox: expected one argument"),
])
def test_an_option_given_in_part_is_refused_and_its_value_not_shown(argv, message, capsys, tmp_path):
    assert _fails(capsys, tmp_path, *argv) == message


# --- values out of range -------------------------------------------------------------------------------------

RENDER = ["render", "--osm", str(HELSINKI_PBF), "--center", "60.17,24.94", "--grid", "2"]
EXTRACT = ["extract", "--tiles", "tiles"]
TRAIN = ["train", "--data", "tiles"]


@pytest.mark.parametrize("argv, message", [
    (RENDER + ["--m-per-px", "-2"], "--m-per-px -2: give a number above 0 and at most 1000"),
    (RENDER + ["--m-per-px", "0"], "--m-per-px 0: give a number above 0 and at most 1000"),
    (RENDER + ["--m-per-px", "100000"], "--m-per-px 100000: give a number above 0 and at most 1000"),
    (RENDER + ["--m-per-px", "nan"], "--m-per-px nan: give a number above 0 and at most 1000"),
    (RENDER + ["--size-px", "0"], "--size-px 0: give a whole number from 16 to 4096"),
    (RENDER + ["--size-px", "100000"], "--size-px 100000: give a whole number from 16 to 4096"),
    (RENDER + ["--marker-radius-px", "1e6"], "--marker-radius-px 1000000: give a number above 0 and at most 64"),
    (RENDER + ["--overlap-px", "-1"], "--overlap-px -1: give a whole number of at least 0"),
    (RENDER + ["--seed", "-1"], "--seed -1: give a whole number from 0 to 4294967295"),
    (RENDER + ["--workers", "-1"], "--workers -1: give a whole number of at least 0"),
    (RENDER[:3] + ["--center", "60.17,24.94", "--grid", "0"], "--grid 0: give a whole number of at least 1"),
    (RENDER[:3] + ["--center", "60.17,24.94", "--grid", "100000"],
     "--grid 100000: 10000000000 tiles, more than the 1000000 a plan may hold; give a smaller area, or a larger "
     "--m-per-px or --size-px"),
    (RENDER[:3] + ["--bbox", "-180,-85,180,85"],
     "the area -180,-85,180,85: 10855943623 tiles, more than the 1000000 a plan may hold; give a smaller area, or "
     "a larger --m-per-px or --size-px"),
    (RENDER[:3] + ["--center", "60.17,24.94", "--grid", "20", "--m-per-px", "1000", "--size-px", "4096"],
     "--grid 20 around the centre: EPSG:3857 bounds -7.83449e+07,-7.26836e+07,8.38976e+07,8.95589e+07 reach beyond "
     "the Web Mercator world (±20037508 m); give a smaller area or --m-per-px, or one farther from the poles and "
     "the antimeridian"),
    (RENDER[:3] + ["--pairs", "2", "--empty-share", "1.5"], "--empty-share 1.5: give a number from 0 to 1"),
    (RENDER + ["--overpass-max-mb", "0"], "--overpass-max-mb 0: give a number above 0"),
    (RENDER + ["--overpass-deadline-s", "-5"], "--overpass-deadline-s -5: give a number above 0"),
    (RENDER + ["--feed-max-mb", "inf"], "--feed-max-mb inf: give a number above 0"),
    (["locations", "feed.json", "--feed-deadline-s", "0"], "--feed-deadline-s 0: give a number above 0"),
    (["evaluate", "--generated", "g.csv", "--truth", "t.csv", "--bbox", CHICAGO, "--feed-max-mb", "-1"],
     "--feed-max-mb -1: give a number above 0"),
    (EXTRACT + ["--hue-deg", "340,260"], "--hue-deg 340,260: give LOW,HIGH with LOW at most HIGH, e.g. 260,340 (a "
                                         "range across 0, red, is not supported)"),
    (EXTRACT + ["--hue-deg", "0,1000"], "--hue-deg 0,1000: give a number from 0 to 360"),
    (EXTRACT + ["--min-saturation", "5"], "--min-saturation 5: give a number from 0 to 1"),
    (EXTRACT + ["--min-value", "-0.1"], "--min-value -0.1: give a number from 0 to 1"),
    (EXTRACT + ["--min-area-px", "0"], "--min-area-px 0: give a whole number of at least 1"),
    (EXTRACT + ["--min-area-px", "-5"], "--min-area-px -5: give a whole number of at least 1"),
    (EXTRACT + ["--dedupe-m", "-1"], "--dedupe-m -1: give a number of at least 0"),
    (EXTRACT + ["--dedupe-m", "nan"], "--dedupe-m nan: give a number of at least 0"),
    (EXTRACT + ["--count", "0"], "--count 0: give a whole number of at least 1"),
    (EXTRACT + ["--per-km2", "0"], "--per-km2 0: give a number above 0"),
    (EXTRACT + ["--preview", "x.jpg"],
     "--preview x.jpg: a preview is written as a PNG image; give a FILE.png"),
    (TRAIN + ["--steps", "0"], "training setting steps 0: give a whole number of at least 1"),
    (TRAIN + ["--steps", "-3"], "training setting steps -3: give a whole number of at least 1"),
    (TRAIN + ["--batch-size", "0"], "training setting batch_size 0: give a whole number of at least 1"),
    (TRAIN + ["--set", "validation_share=2"], "training setting validation_share 2: give a number above 0 and "
                                              "below 1"),
    (TRAIN + ["--set", "crop_px=0"], "training setting crop_px 0: give a whole number from 16 to 4096"),
    (TRAIN + ["--set", "crop_px=130"], "training setting crop_px 130: give a multiple of 4 pixels (the generator "
                                       "halves a crop twice)"),
    (TRAIN + ["--set", "lr=nan"], "training setting lr nan: give a number above 0 and at most 1"),
    (TRAIN + ["--device", "gpu"], "--device gpu: give auto (CUDA when there is one), cpu, cuda or cuda:N"),
    (["generate", "--tiles", "tiles", "--batch-size", "0"], "--batch-size 0: give a whole number of at least 1"),
    (["evaluate", "--generated", "g.csv", "--truth", "t.csv", "--bbox", CHICAGO, "--seed", "-1"],
     "--seed -1: give a whole number from 0 to 4294967295"),
    (["fit-baseline", "--locations", "l.csv", "--osm", "x.pbf", "--near-m", "0"], "--near-m 0: give a number above 0"),
    (["export", "--seed", "-1"], "--seed -1: give a whole number from 0 to 4294967295"),
])
def test_a_value_out_of_range_is_one_line_naming_it_and_what_to_give(argv, message, capsys, tmp_path):
    out = str(tmp_path / {"evaluate": "out.json", "fit-baseline": "out.json", "extract": "out/points.csv",
                          "locations": "points.csv"}.get(
        argv[0], "out"))
    assert _fails(capsys, tmp_path, *argv, "--out", out) == message


# --- random values: a setting takes them or refuses them in one line, never with a traceback ------------------

NUMBERS = st.one_of(st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.just(0), st.just(-0.0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["size_px", "m_per_px", "overlap_px", "marker_radius_px", "empty_share", "seed",
                        "workers", "grid", "pairs", "overpass_max_mb", "overpass_deadline_s", "feed_max_mb",
                        "feed_deadline_s"]), NUMBERS)
def test_any_number_for_a_render_setting_is_taken_or_refused_in_one_line(name, number):
    _taken_or_refused(lambda: RenderSettings(osm=["x.pbf"], out="o", **{name: number}))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["dedupe_m", "min_saturation", "min_value", "min_area_px", "count", "per_km2"]), NUMBERS)
def test_any_number_for_an_extract_setting_is_taken_or_refused_in_one_line(name, number):
    _taken_or_refused(lambda: ExtractSettings(tiles="t", out=["p.csv"], **{name: number}))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(TRAIN_VALUES)), NUMBERS)
def test_any_number_for_a_training_value_is_taken_or_refused_in_one_line(name, number):
    value = (number,) if name == "nce_layers" else number
    _taken_or_refused(lambda: preset_config("tiny", **{name: value}))


REQUIRED = {EvaluateSettings: dict(generated="g.csv", truth=["t.csv"], bbox=LonLatBounds(24.93, 60.16, 24.95, 60.18),
                                   out="r.json"),
            FitBaselineSettings: dict(locations=["l.csv"], osm=["x.pbf"], out="s.json"),
            GenerateSettings: dict(tiles="t", out="g"), ExportSettings: dict(out="m")}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(cls, item.name) for cls in REQUIRED for item in declared(cls) if item.kind in (int, float)]),
       NUMBERS)
def test_any_number_for_another_stage_setting_is_taken_or_refused_in_one_line(setting, number):
    cls, name = setting
    _taken_or_refused(lambda: cls(**REQUIRED[cls], **{name: number}))


def _taken_or_refused(make) -> None:
    try:
        make()
    except LocgenError as error:
        assert "\n" not in str(error) and ": give " in str(error)


# --- credentials in URLs are never shown ---------------------------------------------------------------------

@pytest.mark.parametrize("text, shown", [
    ("http://minio:s3cret@127.0.0.1:9000/bucket", "http://***@127.0.0.1:9000/bucket"),
    ("https://token@kfp.example.com/pipeline", "https://***@kfp.example.com/pipeline"),
    ("see http://a:b@h/ and s3://k:s@bucket/x", "see http://***@h/ and s3://***@bucket/x"),
    ("mailto-like path http://host/a@b stays", "mailto-like path http://host/a@b stays"),
    ("no URL at all", "no URL at all"),
])
def test_the_user_and_password_of_a_url_are_redacted(text, shown):
    assert redacted(text) == shown


def test_an_object_store_endpoint_with_credentials_is_shown_without_them(capsys, tmp_path, monkeypatch):
    with refusing_port() as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://minio:s3cret-key@127.0.0.1:{port}")
        line = _fails(capsys, tmp_path, *RENDER, "--out", "s3://tiles/helsinki")
    assert "s3cret" not in line and f"http://***@127.0.0.1:{port}" in line, line


def test_submit_shows_its_host_without_credentials(capsys, tmp_path):
    with refusing_port() as port:
        host = f"http://admin:s3cret@127.0.0.1:{port}"
        cluster = ["--pipeline", "generate", "--param", "store=s3://locgen/cities", "--param",
                   "osm=s3://osm/oslo.osm.pbf", "--param", "model_uri=s3://locgen/cities/run-1/model.onnx"]
        assert main(["submit", "--host", host, *cluster, "--dry-run"]) == 0
        printed = capsys.readouterr().out
        assert "s3cret" not in printed and json.loads(printed)["host"] == f"http://***@127.0.0.1:{port}"
        line = _fails(capsys, tmp_path, "submit", "--host", host, *cluster)  # nothing listens there
    assert line.startswith(f"--host http://***@127.0.0.1:{port}: no Kubeflow Pipelines health answer at "
                           f"http://***@127.0.0.1:{port}/apis/v2beta1/healthz (<urlopen error ")
    assert line.endswith(">); check --host") and "s3cret" not in line


# --- outputs where nothing can be written --------------------------------------------------------------------

def test_compile_into_a_folder_that_cannot_be_made_is_one_line(capsys, tmp_path):
    not_a_folder = tmp_path / "in" / "a-file"
    not_a_folder.parent.mkdir()
    not_a_folder.write_text("")
    line = _fails(capsys, tmp_path, "compile", "--out-dir", str(not_a_folder / "pipelines"))
    assert line == (f"{not_a_folder / 'pipelines'}: Not a directory; give a path in a folder this user may write to, "
                    "on a disk with free space")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Real training data: 4 pairs of central Helsinki."""
    out = tmp_path_factory.mktemp("pairs") / "helsinki"
    assert main(["render", "--osm", str(HELSINKI_PBF), "--pairs", "4", "--locations",
                 "osm:amenity=bicycle_rental,amenity=bicycle_parking", "--out", str(out)]) == 0
    return out


def test_train_into_a_folder_that_cannot_be_made_is_one_line(pairs, capsys, tmp_path):
    not_a_folder = tmp_path / "in" / "a-file"
    not_a_folder.parent.mkdir()
    not_a_folder.write_text("")
    capsys.readouterr()
    line = _fails(capsys, tmp_path, "train", "--data", str(pairs), "--preset", "tiny", "--steps", "1", "--out",
                  str(not_a_folder / "run"))
    assert line == (f"{not_a_folder / 'run'}: Not a directory; give a path in a folder this user may write to, on a "
                    "disk with free space")
    assert not_a_folder.read_text() == ""


def test_resuming_from_an_empty_checkpoint_is_one_line_and_leaves_it(pairs, capsys, tmp_path):
    last = tmp_path / "in" / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    capsys.readouterr()
    line = _fails(capsys, tmp_path, "train", "--data", str(pairs), "--preset", "tiny", "--steps", "1", "--out",
                  str(tmp_path / "in" / "run"), "--resume")
    assert line == f"{last}: not a readable checkpoint (EOFError); train again, or resume from another checkpoint"
    assert last.read_bytes() == b"" and [path.name for path in last.parent.parent.iterdir()] == ["checkpoints"]


# --- unreadable files ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, reason", [(b"", "EOFError"), (b"PK\x03\x04" + bytes(60), "PytorchStreamReader "
                                                                  "failed reading zip archive: failed finding central "
                                                                  "directory")])
def test_an_empty_or_truncated_model_file_is_one_line(content, reason, capsys, tmp_path):
    model = tmp_path / "in" / "generator.pt"
    model.parent.mkdir()
    model.write_bytes(content)
    assert _fails(capsys, tmp_path, "export", "--checkpoint", str(model), "--out", str(tmp_path / "out" / "m.onnx")) \
        == f"{model}: not a readable generator ({reason}); give the generator.pt that locgen train wrote"


# --- tampered tile sets ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tile_set(tmp_path_factory) -> Path:
    """A real tile set: 2 x 2 plain tiles of central Helsinki."""
    out = tmp_path_factory.mktemp("tiles") / "helsinki"
    assert main(["render", "--osm", str(HELSINKI_PBF), "--out", str(out), "--center", "60.17,24.94", "--grid",
                 "2"]) == 0
    return out


def _tampered(tile_set: Path, tmp_path: Path, change) -> Path:
    """A copy of the tile set under tmp_path/in, its first manifest line replaced by change(row) (a row, or the
    line's bytes)."""
    copy = tmp_path / "in" / "tiles"
    shutil.copytree(tile_set, copy)
    lines = (copy / MANIFEST_KEY).read_bytes().splitlines()
    changed = change(json.loads(lines[0]))
    lines[0] = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
    (copy / MANIFEST_KEY).write_bytes(b"\n".join(lines) + b"\n")
    return copy


def _shifted(row: dict, by_3857: float) -> dict:
    return {**row, "bounds_3857": [value + by_3857 for value in row["bounds_3857"]]}


FIX = "render (or generate) the tile set again: its manifest was changed or cut short"


@pytest.mark.parametrize("change, problem", [
    (lambda row: b"{not json", "not a JSON object"),
    (lambda row: b"\x89PNG\r\n\x1a\n\x00\xff", "not a JSON object"),
    (lambda row: b"[1, 2, 3]", "not a JSON object"),
    (lambda row: b"[" * 100_000, "not a JSON object"),
    (lambda row: {key: value for key, value in row.items() if key != "path"}, "no path or domain"),
    (lambda row: {key: value for key, value in row.items() if key != "bounds_3857"},
     "bounds_3857 None are not four numbers"),
    (lambda row: {**row, "size_px": "256"}, "size_px '256' is not a whole number from 16 to 4096"),
    (lambda row: {**row, "size_px": 0}, "size_px 0 is not a whole number from 16 to 4096"),
    (lambda row: {**row, "bounds_3857": row["bounds_3857"][2:] + row["bounds_3857"][:2]},
     "bounds_3857: EPSG:3857 bounds {e},{n},{w},{s} are empty or inverted"),
    (lambda row: {**row, "bounds_3857": [0, 0, 0, 0]}, "bounds_3857: EPSG:3857 bounds 0,0,0,0 are empty or inverted"),
    (lambda row: {**row, "bounds_3857": [value * 1e30 for value in row["bounds_3857"]]},
     "bounds_3857: EPSG:3857 bounds {w30},{s30},{e30},{n30} reach beyond the Web Mercator world (±20037508 m)"),
    (lambda row: {**row, "bounds_3857": row["bounds_3857"][:3] + [row["bounds_3857"][3] + 100]},
     "bounds_3857 {w},{s},{e},{n100} are not a square tile"),
    (lambda row: _shifted(row, 1000.0), "m_per_px {m} disagrees with its bounds ({m_shifted})"),
    (lambda row: {**row, "m_per_px": 1e30}, "m_per_px 1e+30 disagrees with its bounds ({m6})"),
])
def test_a_tampered_manifest_row_is_one_line_naming_its_line(tile_set, change, problem, capsys, tmp_path):
    row = json.loads((tile_set / MANIFEST_KEY).read_bytes().splitlines()[0])
    west, south, east, north = row["bounds_3857"]
    shifted = _shifted(row, 1000.0)["bounds_3857"]
    lat = lonlat_from_3857(0.0, (shifted[1] + shifted[3]) / 2)[1]
    problem = problem.format(w=f"{west:g}", s=f"{south:g}", e=f"{east:g}", n=f"{north:g}", n100=f"{north + 100:g}",
                             w30=f"{west * 1e30:g}", s30=f"{south * 1e30:g}", e30=f"{east * 1e30:g}",
                             n30=f"{north * 1e30:g}", m=repr(row["m_per_px"]), m6=f"{row['m_per_px']:.6g}",
                             m_shifted=f"{row['mpp_3857'] / mercator_scale(lat):.6g}")
    tiles = _tampered(tile_set, tmp_path, change)
    line = _fails(capsys, tmp_path, "extract", "--tiles", str(tiles), "--out", str(tmp_path / "out" / "p.csv"))
    assert line == f"{tiles / MANIFEST_KEY} line 1: {problem}; {FIX}"


def test_a_tile_of_another_size_or_place_than_its_row_is_one_line(tile_set, capsys, tmp_path):
    tiles = _tampered(tile_set, tmp_path, lambda row: row)
    first, second = (json.loads(line) for line in (tiles / MANIFEST_KEY).read_bytes().splitlines()[:2])
    (tiles / first["path"]).write_bytes(encode_png(np.zeros((64, 64, 3), dtype=np.uint8), {}))
    line = _fails(capsys, tmp_path, "extract", "--tiles", str(tiles), "--out", str(tmp_path / "out" / "p.csv"))
    assert line == (f"{tiles / first['path']}: not a readable tile (64x64 px, but its manifest row says 256x256 px); "
                    "render or generate it again")
    shutil.copy(tiles / second["path"], tiles / first["path"])  # a real tile, of another place
    line = _fails(capsys, tmp_path, "extract", "--tiles", str(tiles), "--out", str(tmp_path / "out" / "p.csv"))
    assert line == (f"{tiles / first['path']}: not a readable tile (its own georeference places it elsewhere than "
                    "its manifest row); render or generate it again")


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00"])
def test_an_empty_or_undersized_tile_is_one_line(tile_set, content, capsys, tmp_path):
    tiles = _tampered(tile_set, tmp_path, lambda row: row)
    first = json.loads((tiles / MANIFEST_KEY).read_bytes().splitlines()[0])
    (tiles / first["path"]).write_bytes(content)
    line = _fails(capsys, tmp_path, "extract", "--tiles", str(tiles), "--out", str(tmp_path / "out" / "p.csv"))
    assert line == (f"{tiles / first['path']}: not a readable tile (not a PNG file (no PNG signature and header)); "
                    "render or generate it again")


# --- outputs never replace an input, nor another run's tile set ------------------------------------------------

@pytest.mark.parametrize("flag, name", [("--out", "points.csv"), ("--out", "b/points.geojson"),
                                        ("--preview", "preview.png"), ("--preview-generated", "b/seen.png")])
def test_extract_writes_nothing_into_the_tile_set_it_reads(tile_set, flag, name, capsys, tmp_path):
    tiles = _tampered(tile_set, tmp_path, lambda row: row)
    before = {path: path.read_bytes() for path in tiles.rglob("*") if path.is_file()}
    argv = ["extract", "--tiles", str(tiles), "--out", str(tiles / name if flag == "--out" else tmp_path / "p.csv")]
    argv += [flag, str(tiles / name)] if flag != "--out" else []
    line = _fails(capsys, tmp_path, *argv)
    assert line == (f"{flag} {tiles / name}: lies inside the tile set of --tiles, which is read, not written; write "
                    "it outside that folder")
    assert {path: path.read_bytes() for path in tiles.rglob("*") if path.is_file()} == before


def test_of_two_runs_of_other_plans_started_at_once_the_last_claim_publishes_and_the_other_nothing(tmp_path):
    store = open_store(tmp_path / "tiles")
    first = tileset_plan(store, "render", {"bbox": [24.93, 60.16, 24.95, 60.18]}, overwrite=False)
    second = tileset_plan(store, "render", {"bbox": [26.93, 60.52, 26.97, 60.54]}, overwrite=False)  # both: free
    claim(store, first)
    claim(store, second)  # the later claim wins
    check_claim(store, second)
    with pytest.raises(LocgenError) as error:
        check_claim(store, first)
    assert str(error.value) == (f"--out {store.uri}: another run of another plan took it over while this one ran; "
                                "its tile set stands and this run published nothing: run again with another --out")
    assert tileset_plan(store, "render", {"bbox": [26.93, 60.52, 26.97, 60.54]}, overwrite=False) == second


def test_a_tile_set_written_before_plans_were_recorded_is_replaced_only_when_asked(tile_set, tmp_path):
    copy = tmp_path / "tiles"
    shutil.copytree(tile_set, copy)
    (copy / PLAN_KEY).unlink()
    with pytest.raises(LocgenError, match=r"holds another tile set \(one with no plan recorded\)"):
        tileset_plan(open_store(copy), "render", {}, overwrite=False)
    assert tileset_plan(open_store(copy), "render", {}, overwrite=True) == {"stage": "render", "identity": {}}


@pytest.mark.parametrize("georef", ["{not json", "[1, 2]", "[" * 100_000])
@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "folder of PNGs"])
def test_a_tile_whose_georeference_is_not_json_is_one_line(tile_set, georef, with_manifest, capsys, tmp_path):
    tiles = _tampered(tile_set, tmp_path, lambda row: row)
    first = json.loads((tiles / MANIFEST_KEY).read_bytes().splitlines()[0])
    rgb = decode_tile((tiles / first["path"]).read_bytes(), first["path"], first)
    (tiles / first["path"]).write_bytes(encode_png(rgb, {"locgen:georef": georef}))
    if not with_manifest:  # each PNG's own georeference is all there is
        (tiles / MANIFEST_KEY).unlink()
        (tiles / PLAN_KEY).unlink()
    line = _fails(capsys, tmp_path, "extract", "--tiles", str(tiles), "--out", str(tmp_path / "out" / "p.csv"))
    problem = "its 'locgen:georef' PNG text chunk is not a JSON object"
    assert line == (f"{tiles / first['path']}: not a readable tile ({problem}); render or generate it again"
                    if with_manifest else f"{tiles / first['path']}: {problem}; remove it or render the tile again")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_as_a_manifest_or_a_tile_are_refused_in_one_line(raw):
    for read in (lambda: parse_manifest(raw, "manifest.jsonl"),
                 lambda: decode_tile(raw, "tile.png", {"size_px": 256, "bounds_3857": [0, 0, 512, 512]})):
        try:
            read()
        except LocgenError as error:
            assert "\n" not in str(error)
