"""Validation on places: a training set rendered with a held-out box brings that box's plain tiles and
real points, and training scores its generators there (F1 within 50 m, grid Spearman) and keeps the
best. Real renders of the bundled Helsinki extract."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import HELSINKI_PBF, ReplayGenerator

from components.core.errors import LocgenError
from components.core.geo import Bounds3857, LonLatBounds, bounds_to_3857, contains, expand, intersects
from components.core.scoring import score_points
from components.core.storage import open_store
from components.core.tileset import decode_tile, read_manifest
from components.extract.job import ExtractSettings, extract
from components.render.job import RenderSettings, render
from components.sources.locations import load_locations
from components.train.data import load_tile_sets, load_tiles
from components.train.generator_file import GENERATOR_KEY, load_generator
from components.train.train import METRICS_KEY, _better, _near_real_rate
from components.train.validation import place_scores
from locgen.cli import main

LOCATIONS = ["osm:amenity=bicycle_rental,amenity=bicycle_parking"]
HOLDOUT = LonLatBounds(24.9351, 60.1641, 24.9535, 60.1680)  # the sample's held-out box (pipelines.SAMPLE_HOLDOUT)
HOLDOUT_TEXT = ",".join(f"{value:g}" for value in HOLDOUT)


def _render(out, **settings) -> str:
    render(RenderSettings(**{"osm": [str(HELSINKI_PBF)], "out": str(out), "city": "helsinki",
                             "locations": LOCATIONS, "marker_radius_px": 5.0, "progress": False, **settings}))
    return str(out)


@pytest.fixture(scope="module")
def held_out_set(tmp_path_factory) -> str:
    return _render(tmp_path_factory.mktemp("pairs") / "pairs", pairs=12, sampling="area", holdout=HOLDOUT)


def _real_points_in(bbox: LonLatBounds) -> np.ndarray:
    points = load_locations(LOCATIONS[0], osm_files=[HELSINKI_PBF]).points
    lonlat = np.array([[point.lon, point.lat] for point in points if point.weight > 0])
    return lonlat[contains(bbox, lonlat[:, 0], lonlat[:, 1])]


def _sorted(points: np.ndarray) -> np.ndarray:
    return points[np.lexsort((points[:, 1], points[:, 0]))]


def test_a_held_out_box_comes_with_its_plain_tiles_and_every_real_point_in_it(held_out_set):
    rows = read_manifest(open_store(held_out_set))
    held_out = [row for row in rows if row["domain"] == "holdout"]
    training = [row for row in rows if row["domain"] in ("a", "b")]
    assert len(training) == 24 and len(held_out) == 6  # 3 x 2 tiles, their cores covering the box
    box_3857 = bounds_to_3857(HOLDOUT)
    assert not any(intersects(Bounds3857(*row["bounds_3857"]), box_3857) for row in training)
    cores = [expand(Bounds3857(*row["bounds_3857"]), -row["core_inset_px"] * row["mpp_3857"]) for row in held_out]
    assert min(core.west for core in cores) <= box_3857.west and max(core.east for core in cores) >= box_3857.east
    assert min(core.south for core in cores) <= box_3857.south and max(core.north for core in cores) >= box_3857.north
    assert all(row["holdout_lonlat"] == list(HOLDOUT) for row in held_out)
    data = load_tiles(held_out_set, 0.2)
    (box,) = data.held_out_boxes
    assert box.city == "helsinki" and box.bbox == HOLDOUT and box.tiles.shape == (6, 3, 256, 256)
    real = _real_points_in(HOLDOUT)
    assert len(real) == 20
    assert np.array_equal(_sorted(box.points_lonlat), _sorted(real))


def test_places_score_a_generator_as_the_extraction_and_evaluation_stages_would_and_one_that_paints_none_as_nothing(
        held_out_set, tmp_path):
    (box,) = load_tiles(held_out_set, 0.2).held_out_boxes
    # The same tiles with the real markers drawn: an area render of the box with its locations (domain a).
    drawn = _render(tmp_path / "drawn", bbox=HOLDOUT)
    store = open_store(drawn)
    by_id = {row["id"]: row for row in read_manifest(store) if row["domain"] == "a"}
    images = torch.from_numpy(np.stack([decode_tile(store.get_bytes(by_id[row["id"][1:]]["path"]), "drawn",
                                                    by_id[row["id"][1:]])
                                        for row in box.rows])).permute(0, 3, 1, 2)
    painted = place_scores(ReplayGenerator(images), [box], 5.0, torch.device("cpu"))["places"]["helsinki"]
    extract(ExtractSettings(tiles=drawn, out=[str(tmp_path / "points.csv")], domain="a", progress=False))
    points = np.array([[row["longitude"], row["latitude"]] for row in
                       csv.DictReader(line for line in (tmp_path / "points.csv").open() if not line.startswith("#"))],
                      dtype=np.float64)
    scored = score_points(points, box.points_lonlat, HOLDOUT, radii_m=(50.0,), grid_m=100.0)  # in the box only
    # 16 of the 20: three points lie within 5 m and three pairs within 12 m, under one 10 m marker disc each.
    assert painted == {"f1@50m": scored["metrics"]["f1@50m"], "grid_spearman": scored["metrics"]["grid_spearman"],
                       "generated": 16, "real": 20}
    assert painted["f1@50m"] == 2 * 16 / 36
    nothing = place_scores(ReplayGenerator(box.tiles), [box], 5.0, torch.device("cpu"))  # the plain map, unchanged
    assert nothing == {"places": {"helsinki": {"f1@50m": 0.0, "grid_spearman": None, "generated": 0, "real": 20}},
                       "place_score": 0.0}
    assert place_scores(ReplayGenerator(box.tiles), [], 5.0, torch.device("cpu")) == {"places": {}, "place_score": None}


def test_the_best_checkpoint_is_the_one_with_the_best_places_where_there_are_held_out_boxes():
    # Within the dot-rate gate places choose, even over dots nearer the real rate (8 real dots a tile).
    closer_dots_worse_places = {"dots_per_tile": 8.0, "real_dots_per_tile": 8.0, "dot_rate_error": 0.0,
                                "place_score": 0.2}
    farther_dots_better_places = {"dots_per_tile": 12.0, "real_dots_per_tile": 8.0, "dot_rate_error": 0.5,
                                  "place_score": 0.3}
    assert _better(farther_dots_better_places, closer_dots_worse_places)
    assert not _better(closer_dots_worse_places, farther_dots_better_places)
    assert not _better(dict(farther_dots_better_places), farther_dots_better_places)  # a tie keeps the earlier
    assert _better({"dot_rate_error": 0.5, "place_score": None}, {"dot_rate_error": 0.6, "place_score": None})
    assert _better({"dots_per_tile": 0.0, "real_dots_per_tile": 8.0, "dot_rate_error": 1.0, "place_score": 0.0},
                   {"dot_rate_error": 0.1, "place_score": None})  # places measured beat places unmeasured


def test_a_warm_start_never_leaves_places_worse_than_the_generator_it_started_from(held_out_set, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", held_out_set, "--out", str(out), "--init-from", "bundled", "--steps", "50",
                 "--set", "checkpoint_every=25", "--device", "cpu"]) == 0
    validations = [json.loads(line)["validation"] for line in (out / METRICS_KEY).read_text().splitlines()
                   if "validation" in json.loads(line)]
    assert [row["step"] for row in validations] == [0, 25, 50]
    (box,) = load_tiles(held_out_set, 0.2).held_out_boxes
    bundled, _ = load_generator()
    assert validations[0]["places"] == place_scores(bundled, [box], 5.0, torch.device("cpu"))["places"]
    chosen = load_generator(str(out / GENERATOR_KEY))[1]["validation"]
    gated = [row for row in validations if _near_real_rate(row)]
    assert validations[0] in gated  # the bundled generator paints near the real rate on this set
    assert chosen["place_score"] == max(row["place_score"] for row in gated) >= validations[0]["place_score"]


def test_held_out_boxes_that_a_training_tile_covers_and_boxes_with_no_point_are_named(held_out_set, tmp_path):
    everywhere = _render(tmp_path / "everywhere", pairs=12, sampling="area")  # no box kept clear
    with pytest.raises(LocgenError, match=rf"^--data {everywhere}: training tile g\d+ \(of \d+\) covers the held-out "
                                          rf"box {HOLDOUT_TEXT} of --data {held_out_set}; render the sets with"):
        load_tile_sets([held_out_set, everywhere], 0.2)
    empty_box = LonLatBounds(24.9400, 60.1700, 24.9401, 60.1701)
    assert not len(_real_points_in(empty_box))
    with pytest.raises(LocgenError, match=r"^--holdout 24.94,60.17,24.9401,60.1701: no location lies inside it"):
        _render(tmp_path / "empty-box", pairs=12, holdout=empty_box)
    assert not (tmp_path / "empty-box" / "manifest.jsonl").exists()
