"""`locgen render` and `locgen locations` end to end: local and S3 tile sets, re-runs, bad input."""

import csv
import json
import signal
import threading

import pytest
from conftest import HELSINKI_PBF, KOTKA_PBF
from overpass_server import OverpassServer
from s3server import DyingProxy, free_port, unique_prefix

from components.core.storage import open_store
from components.core.tileset import MANIFEST_KEY, PLAN_KEY, read_manifest
from locgen.cli import main

BICYCLE_POINTS = "osm:amenity=bicycle_rental,amenity=bicycle_parking"
HELSINKI_PAIRS = ["render", "--osm", str(HELSINKI_PBF), "--city", "helsinki", "--pairs", "6",
                  "--locations", BICYCLE_POINTS]


def run(capsys, *argv):
    """Run the CLI; return (exit status, the JSON summary or the stderr lines)."""
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    if status == 0:
        return status, json.loads(captured.out)
    return status, [line for line in captured.err.splitlines() if line.strip() and not line.startswith("render ")]


def test_a_rerun_renders_nothing_and_a_changed_input_renders_only_what_it_changes(tmp_path, capsys):
    out = str(tmp_path / "pairs")
    status, first = run(capsys, *HELSINKI_PAIRS, "--out", out)
    assert status == 0 and (first["tiles"], first["rendered"], first["skipped"]) == (12, 12, 0)
    manifest = (tmp_path / "pairs" / MANIFEST_KEY).read_bytes()
    status, again = run(capsys, *HELSINKI_PAIRS, "--out", out)
    assert (again["rendered"], again["skipped"]) == (0, 12)
    assert (tmp_path / "pairs" / MANIFEST_KEY).read_bytes() == manifest
    status, bigger = run(capsys, *HELSINKI_PAIRS, "--out", out, "--marker-radius-px", "4", "--overwrite")
    assert (bigger["rendered"], bigger["skipped"]) == (6, 6)  # the b tiles have no markers


def _fail_after(seconds: int):
    def fail(*_):
        raise TimeoutError(f"render hung for {seconds} s")
    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def test_more_pairs_reuse_the_tiles_of_fewer(tmp_path, capsys):
    out = str(tmp_path / "pairs")
    run(capsys, *HELSINKI_PAIRS, "--out", out, "--empty-share", "0")
    status, more = run(capsys, *HELSINKI_PAIRS, "--pairs", "9", "--out", out, "--empty-share", "0", "--overwrite")
    assert status == 0 and (more["tiles"], more["rendered"], more["skipped"]) == (18, 6, 12)


def test_a_render_of_another_plan_into_a_tile_set_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "pairs"
    run(capsys, *HELSINKI_PAIRS, "--out", str(out))
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    status, lines = run(capsys, *HELSINKI_PAIRS, "--pairs", "9", "--seed", "3", "--out", str(out))
    assert status == 2 and lines == [f"locgen: error: --out {out}: holds another tile set (render of other "
                                     "pairs, seed); give another --out, or --overwrite to replace it (the tiles they "
                                     "share are reused)"]
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_all_cores_give_the_same_tiles_as_one(tmp_path, capsys):
    # One process first, then all cores, in the same Python process: no upload thread may outlive
    # a render, or a later render would fork it, dead, into its workers (a benchmark hung on that).
    args = ["render", "--osm", str(KOTKA_PBF), "--city", "kotka", "--center", "60.53,26.95", "--grid", "6"]
    _fail_after(60)
    try:
        run(capsys, *args, "--out", str(tmp_path / "one"), "--workers", "1")
        assert not [thread for thread in threading.enumerate() if thread.name.startswith("upload")]
        status, summary = run(capsys, *args, "--out", str(tmp_path / "all"), "--workers", "0")
    finally:
        signal.alarm(0)
    assert status == 0 and summary["tiles"] == 36
    one, every = read_manifest(open_store(str(tmp_path / "one"))), read_manifest(open_store(str(tmp_path / "all")))
    assert one == every
    for row in one:
        assert (tmp_path / "one" / row["path"]).read_bytes() == (tmp_path / "all" / row["path"]).read_bytes()


def _gbfs_without_positions(tmp_path):
    feed = tmp_path / "free_bike_status.json"
    feed.write_text(json.dumps({"last_updated": 1699003875, "ttl": 0, "version": "2.3", "data": {"bikes": []}}))
    return str(feed)


def _corrupt_pbf(tmp_path):
    pbf = tmp_path / "corrupt.osm.pbf"
    pbf.write_bytes(HELSINKI_PBF.read_bytes()[:1000] + b"\x00garbage" * 100)
    return str(pbf)


@pytest.mark.parametrize("case, message", [
    ("latitude 91", "--center: latitude 91.0 is outside ±85.05112878"),
    ("inverted bbox", "--bbox: 24.96,60.16,24.93,60.18 is empty or inverted"),
    ("bbox with no OSM data", "no OSM map features in (26.92"),
    ("corrupt pbf", "not a readable OSM file"),
    ("unreachable store", "is unreachable"),
    ("GBFS with no positions", "free_bike_status.json"),
    ("negative workers", "--workers -1: give a whole number of at least 0"),
])
def test_bad_input_gives_one_clear_line_and_writes_nothing(case, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    out = tmp_path / "out"
    helsinki = ["render", "--osm", str(HELSINKI_PBF), "--out", str(out)]
    argv = {
        "latitude 91": helsinki + ["--center", "91,24.94", "--grid", "3"],
        "inverted bbox": helsinki + ["--bbox", "24.96,60.16,24.93,60.18"],
        "bbox with no OSM data": helsinki + ["--bbox", "26.93,60.52,26.97,60.54"],
        "corrupt pbf": ["render", "--osm", _corrupt_pbf(tmp_path), "--out", str(out), "--grid", "2",
                        "--center", "60.17,24.94"],
        "unreachable store": ["render", "--osm", str(HELSINKI_PBF), "--out", "s3://tiles/helsinki",
                              "--center", "60.17,24.94", "--grid", "2"],
        "GBFS with no positions": HELSINKI_PAIRS[:5] + ["--pairs", "2", "--out", str(out), "--locations",
                                                        _gbfs_without_positions(tmp_path)],
        "negative workers": helsinki + ["--center", "60.17,24.94", "--grid", "2", "--workers", "-1"],
    }[case]
    status, errors = run(capsys, *argv)
    assert status == 2
    assert len(errors) == 1 and errors[0].startswith("locgen: error: ") and message in errors[0], errors
    assert not out.exists()


def test_render_to_s3_lists_reruns_and_survives_a_store_that_dies_midway(s3_env, tmp_path, capsys, monkeypatch):
    prefix = f"s3://{s3_env.bucket}/{unique_prefix()}"
    args = ["render", "--osm", str(KOTKA_PBF), "--city", "kotka", "--center", "60.53,26.95", "--grid", "3"]

    status, summary = run(capsys, *args, "--out", f"{prefix}/small", "--grid", "2", "--workers", "2")
    assert status == 0 and summary["manifest"] == f"{prefix}/small/{MANIFEST_KEY}"
    rows = read_manifest(open_store(f"{prefix}/small"))
    assert open_store(f"{prefix}/small").list_keys() == {row["path"] for row in rows} | {MANIFEST_KEY, PLAN_KEY}
    status, again = run(capsys, *args, "--out", f"{prefix}/small", "--grid", "2")
    assert (again["rendered"], again["skipped"]) == (0, 4)

    # The store goes away at the 5th tile upload of a 9-tile run. The proxy counts uploads under a lock,
    # so it is always the 5th, however the 8 parallel uploads interleave; how many of the 4 before it
    # had landed when it died depends on that interleaving. What holds for every one: one clear line
    # naming the store, the earlier manifest untouched, no temporary or partial object, and a re-run
    # that renders exactly the tiles that are missing.
    with DyingProxy(s3_env.endpoint_url, rb"^PUT /\S+\.png ", nth=5) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        status, errors = run(capsys, *args, "--out", f"{prefix}/small", "--overwrite")
    assert proxy.died.is_set() and status == 2 and len(errors) == 1, errors
    assert f"object store {proxy.url} (AWS_ENDPOINT_URL) is unreachable" in errors[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint_url)
    store = open_store(f"{prefix}/small")
    assert read_manifest(store) == rows  # not replaced by a manifest of the unfinished run
    assert all(store.exists(row["path"]) for row in rows)
    assert not any(".tmp-" in name for name in s3_env.object_names())
    landed = store.list_keys() - {row["path"] for row in rows} - {MANIFEST_KEY, PLAN_KEY}
    assert len(landed) <= 4  # the 5th upload and every later one never reached the store

    status, resumed = run(capsys, *args, "--out", f"{prefix}/small")  # resumes where it stopped: its plan now
    assert status == 0
    assert (resumed["tiles"], resumed["rendered"], resumed["skipped"]) == (9, 9 - len(landed), len(landed))
    finished = read_manifest(store)
    assert len(finished) == 9 and landed <= {row["path"] for row in finished}
    # Every tile is whole, those uploaded before the store died included: the same bytes as a local render.
    status, _ = run(capsys, *args, "--out", str(tmp_path / "local"), "--workers", "1")
    assert status == 0 and read_manifest(open_store(str(tmp_path / "local"))) == finished
    for row in finished:
        assert store.get_bytes(row["path"]) == (tmp_path / "local" / row["path"]).read_bytes(), row["path"]


def test_osm_data_and_osm_tag_locations_from_s3(s3_env, tmp_path, capsys):
    pbf_uri = f"s3://{s3_env.bucket}/{unique_prefix()}/osm/helsinki-center.osm.pbf"
    open_store(pbf_uri.rpartition("/")[0]).put_bytes("helsinki-center.osm.pbf", HELSINKI_PBF.read_bytes())
    status, summary = run(capsys, "render", "--osm", pbf_uri, "--cache-dir", str(tmp_path / "cache"),
                          "--pairs", "3", "--locations", BICYCLE_POINTS, "--out", str(tmp_path / "tiles"))
    assert status == 0 and summary["city"] == "helsinki-center" and summary["tiles"] == 6
    row = read_manifest(open_store(str(tmp_path / "tiles")))[1]
    assert row["sources"][0] == {"uri": pbf_uri, "kind": "osm",
                                 "sha256": "b73e9c2c82054d654209b0127f1c3287d5900d6780a6083bf3a45ead8ba3e5ee"}
    assert len(row["points"]) >= 1 and row["marker_radius_px"] == 3


def test_locations_from_and_to_s3(s3_env, capsys):
    prefix = f"s3://{s3_env.bucket}/{unique_prefix()}"
    open_store(prefix).put_bytes("points.csv", b"name;lat;lon\nkiosk;60,1699;24,9384\n")
    status, summary = run(capsys, "locations", f"{prefix}/points.csv", "--out", f"{prefix}/normalised.geojson")
    assert status == 0 and summary["points"] == 1
    feature = json.loads(open_store(prefix).get_bytes("normalised.geojson"))["features"][0]
    assert feature["geometry"]["coordinates"] == [24.9384, 60.1699]


def test_render_from_overpass_is_cached(tmp_path, capsys):
    with OverpassServer() as server:
        args = ["render", "--osm", "overpass", "--overpass-url", server.url, "--cache-dir", str(tmp_path / "cache"),
                "--bbox", "24.940,60.168,24.946,60.172", "--city", "helsinki"]
        status, summary = run(capsys, *args, "--out", str(tmp_path / "a"))
        assert status == 0 and summary["tiles"] == 2  # cores of 384 m (the default overlap) over a 445 m tall box
        status, _ = run(capsys, *args, "--out", str(tmp_path / "b"))
        assert status == 0 and len(server.requests) == 1  # the second run read the cache
    row = read_manifest(open_store(str(tmp_path / "a")))[0]
    assert row["sources"][0]["kind"] == "osm"
    assert row["sources"][0]["uri"].startswith(f"{server.url}?bbox=24.93")  # the lineage names the endpoint


def test_locations_command_writes_points_with_provenance(tmp_path, capsys):
    out = tmp_path / "points.csv"
    status, summary = run(capsys, "locations", BICYCLE_POINTS, "--osm", str(HELSINKI_PBF), "--out", str(out))
    assert status == 0 and summary["points"] == 68
    with out.open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 68 and list(rows[0])[:2] == ["latitude", "longitude"]
    assert {row["source"] for row in rows} == {BICYCLE_POINTS}
    status, _ = run(capsys, "locations", BICYCLE_POINTS, "--osm", str(HELSINKI_PBF),
                    "--out", str(tmp_path / "p.geojson"))
    collection = json.loads((tmp_path / "p.geojson").read_text())
    assert len(collection["features"]) == 68 and collection["attribution"] == "© OpenStreetMap contributors"
