"""Points only where the map is, and each from the one tile that owns it: the data extent, the
cores of overlapping tiles, and the number of points asked for. Real renders of the bundled
extracts, the real bundled generator."""

import csv
import json
import math

import cv2
import numpy as np
import pytest
from conftest import KOTKA_PBF
from scipy.spatial import cKDTree

from components.core.geo import lonlat_to_3857
from components.core.markers import MARKER_RGB, marker_mask
from components.core.pngmeta import decode_png, encode_png, read_png_text
from components.core.points import write_points
from components.core.provenance import OSM_ATTRIBUTION
from components.core.storage import open_store
from components.core.tileset import read_manifest, tile_of_row
from components.extract.preview import RING_RGB
from components.sources.osm import header_bounds
from locgen.cli import main

# A 4 x 4 grid whose east side reaches 1 km beyond the Kotka extract (26.93-26.97 E, 60.52-60.54 N).
BEYOND_KOTKA = ["--center", "60.53,26.975", "--grid", "4"]


def _run(capsys, *args) -> tuple[int, dict | None, str]:
    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, (json.loads(out) if status == 0 else None), err


def _points(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def kotka_beyond(tmp_path_factory):
    """The grid beyond Kotka rendered, generated with the bundled model, and its points extracted."""
    work = tmp_path_factory.mktemp("beyond")
    plain, generated, points = work / "plain", work / "generated", work / "points.csv"
    assert main(["render", "--osm", str(KOTKA_PBF), "--city", "kotka", "--out", str(plain), *BEYOND_KOTKA]) == 0
    assert main(["generate", "--tiles", str(plain), "--out", str(generated)]) == 0
    assert main(["extract", "--tiles", str(generated), "--out", str(points)]) == 0
    return plain, generated, points


def test_a_grid_beyond_the_extract_is_rendered_with_a_warning_naming_the_covered_share(tmp_path, capsys):
    status, summary, err = _run(capsys, "render", "--osm", str(KOTKA_PBF), "--city", "kotka", "--out",
                                str(tmp_path / "plain"), *BEYOND_KOTKA)
    assert status == 0 and 0.25 < summary["data_share"] < 0.4  # its cores: 26.961-26.989 E, data to 26.97
    assert f"only {100 * summary['data_share']:.0f} % of the area lies inside the OSM data's extent" in err
    rows = read_manifest(open_store(str(tmp_path / "plain")))
    extent = header_bounds(KOTKA_PBF)
    assert all(row["data_extent_lonlat"] == [list(extent)] for row in rows)
    outside = [row for row in rows if row["bounds_lonlat"][0] >= extent.east]
    assert outside and all(row["data_share"] == 0 and row["map_features"] == 0 for row in outside)
    assert all(row["data_share"] == 1 for row in rows if row["bounds_lonlat"][2] <= extent.east)


def test_no_point_lies_outside_the_data_extent_and_no_tile_outside_it_is_translated(kotka_beyond):
    plain, generated, points = kotka_beyond
    extent = header_bounds(KOTKA_PBF)
    plain_rows = read_manifest(open_store(str(plain)))
    generated_rows = read_manifest(open_store(str(generated)))
    assert len(generated_rows) == sum(row["data_share"] > 0 for row in plain_rows) < len(plain_rows)
    found = _points(points)
    assert len(found) > 20
    for point in found:
        lon, lat = float(point["longitude"]), float(point["latitude"])
        assert extent.west <= lon < extent.east and extent.south <= lat < extent.north, point


def test_each_point_comes_from_one_tile_and_tile_edges_show_no_seam(kotka_beyond):
    _, generated, points = kotka_beyond
    rows = read_manifest(open_store(str(generated)))
    tiles = [tile_of_row(row) for row in rows]
    found = _points(points)
    lonlat = np.array([[float(p["longitude"]), float(p["latitude"])] for p in found])
    xy = np.stack(lonlat_to_3857(lonlat[:, 0], lonlat[:, 1]), axis=1)
    assert not cKDTree(xy).query_pairs(6.0 / math.cos(math.radians(60.53)))  # no dot counted twice
    # Each point lies in the core of the tile it is reported from, at least half the overlap inside it.
    by_id = {row["id"]: (row, tile) for row, tile in zip(rows, tiles)}
    for point, (lon, lat) in zip(found, lonlat):
        row, tile = by_id[point["tile_id"]]
        col, row_px = tile.lonlat_to_px(lon, lat)
        inset = row["core_inset_px"]
        assert inset == 32 and inset <= col < 256 - inset and inset <= row_px < 256 - inset
    # Points within 6 px of any tile edge of the set, against the share of the mapped area there.
    near = np.zeros(len(lonlat), dtype=bool)
    for tile in tiles:
        col, row_px = tile.lonlat_to_px(lonlat[:, 0], lonlat[:, 1])
        inside = (col >= 0) & (col < 256) & (row_px >= 0) & (row_px < 256)
        near |= inside & (np.minimum.reduce([col, row_px, 256 - col, 256 - row_px]) < 6)
    # Cores of 192 px: in each direction a core holds 2 x 6 px of its neighbours' edges, 12/192 of its side.
    near_share_of_area = 1 - (1 - 12 / 192) ** 2
    assert near.mean() / near_share_of_area < 1.3


def test_count_keeps_exactly_the_best_scoring_points(kotka_beyond, tmp_path, capsys):
    _, generated, points = kotka_beyond
    every = _points(points)
    for count in (5, len(every) + 10):
        out = tmp_path / f"best-{count}.csv"
        status, summary, _ = _run(capsys, "extract", "--tiles", str(generated), "--out", str(out), "--count",
                                  str(count))
        best = _points(out)
        assert status == 0 and summary["points"] == len(best) == min(count, len(every))
        expected = sorted(every, key=lambda p: -float(p["score"]))[:min(count, len(every))]
        assert sorted(p["score"] for p in best) == sorted(p["score"] for p in expected)
        assert {(p["latitude"], p["longitude"]) for p in best} <= {(p["latitude"], p["longitude"]) for p in every}


@pytest.mark.parametrize(("args", "message"), [  # counts out of range: tests/test_bad_input.py
    (["extract", "--count", "0"], "--count 0: give a whole number of at least 1"),
    (["render", "--overlap-px", "128"], "--overlap-px 128: give at least 0 and less than half the tile size (256 px)"),
])
def test_bad_counts_and_overlaps_are_one_line_and_write_nothing(kotka_beyond, tmp_path, capsys, args, message):
    plain, generated, _ = kotka_beyond
    out = tmp_path / "out"
    if args[0] == "extract":
        full = [*args, "--tiles", str(generated), "--out", str(out / "points.csv")]
    else:
        full = [*args, "--osm", str(KOTKA_PBF), "--out", str(out), "--center", "60.53,26.95", "--grid", "2"]
    status, _, err = _run(capsys, *full)
    assert status == 2 and message in err and err.count("locgen: error:") == 1
    assert not out.exists()


def test_evaluation_scores_the_covered_area_and_the_best_points_at_the_real_count(tmp_path, capsys):
    rng = np.random.default_rng(3)
    inside = np.column_stack([rng.uniform(26.935, 26.965, 10), rng.uniform(60.522, 60.538, 10)])
    beyond = np.column_stack([rng.uniform(26.975, 26.985, 3), rng.uniform(60.522, 60.538, 3)])
    scores = [0.1 * (k + 1) for k in range(10)] + [1.0, 1.0, 1.0]
    generated = tmp_path / "generated.csv"
    write_points(str(generated), ("latitude", "longitude", "tile_id", "score", "city"),
                 [(lat, lon, "t", score, "kotka") for (lon, lat), score in zip(np.vstack([inside, beyond]), scores)])
    truth = tmp_path / "truth.csv"
    write_points(str(truth), ("latitude", "longitude"), [(lat, lon) for lon, lat in inside[:4]])
    status, _, _ = _run(capsys, "evaluate", "--generated", str(generated), "--truth", str(truth), "--bbox",
                        "26.93,60.52,26.99,60.54", "--osm", str(KOTKA_PBF), "--count", "truth",
                        "--out", str(tmp_path / "report.json"))
    report = json.loads((tmp_path / "report.json").read_text())
    extent = header_bounds(KOTKA_PBF)
    assert status == 0 and report["inputs"]["area"] == [26.93, 60.52, extent.east, extent.north]
    assert report["model"]["points"]["generated"] == 4  # the 4 best inside the extent, not the 3 beyond it
    assert "the best-scoring generated points, as many as the real ones" in (tmp_path / "report.md").read_text()
    status, _, err = _run(capsys, "evaluate", "--generated", str(generated), "--truth", str(truth), "--bbox",
                          "26.93,60.52,26.99,60.54", "--count", "0", "--out", str(tmp_path / "again.json"))
    assert status == 2 and "--count 0: give a number of points above 0, or 'truth'" in err
    assert not (tmp_path / "again.json").exists()


def test_the_preview_draws_the_points_over_the_plain_map_and_the_generated_tiles_beside_it(kotka_beyond, tmp_path,
                                                                                           capsys):
    _, generated, _ = kotka_beyond
    plain_png, generated_png = tmp_path / "preview.png", tmp_path / "generated.png"
    status, summary, _ = _run(capsys, "extract", "--tiles", str(generated), "--out", str(tmp_path / "p.csv"),
                              "--preview", str(plain_png), "--preview-generated", str(generated_png))
    assert status == 0 and summary["preview_generated"] == str(generated_png)
    plain, painted = (decode_png(path.read_bytes()) for path in (plain_png, generated_png))
    assert plain.shape == painted.shape
    assert not marker_mask(plain).any()  # the plain map: no generator's magenta, only the rings
    assert marker_mask(painted).sum() > 100
    assert (plain == RING_RGB).all(axis=2).any()
    for path in (plain_png, generated_png):
        assert read_png_text(path.read_bytes())["Copyright"] == OSM_ATTRIBUTION


def test_magenta_that_no_markers_explain_is_rejected_and_counted_by_reason(tmp_path, capsys):
    tiles = tmp_path / "tiles"
    assert main(["render", "--osm", str(KOTKA_PBF), "--city", "kotka", "--out", str(tiles), "--center",
                 "60.53,26.95", "--grid", "1"]) == 0
    capsys.readouterr()
    row = read_manifest(open_store(str(tiles)))[0]
    png = (tiles / row["path"]).read_bytes()
    image = decode_png(png).copy()
    cv2.rectangle(image, (40, 100), (239, 107), MARKER_RGB, -1)  # a stripe 8 px wide and 200 px long
    cv2.circle(image, (128, 180), 3, MARKER_RGB, -1)  # and one marker
    (tiles / row["path"]).write_bytes(encode_png(image, read_png_text(png)))
    status, summary, _ = _run(capsys, "extract", "--tiles", str(tiles), "--out", str(tmp_path / "p.csv"))
    assert status == 0 and summary["points"] == 1
    assert summary["rejected_blobs"] == {"ring": 0, "frame": 0, "stripe": 1, "smear": 0, "not_discs": 0}
