"""Tile plans: grids abut exactly, bboxes are covered, training pairs respect the held-out region."""

import numpy as np
import pytest
from conftest import HELSINKI_PBF

from components.core.errors import LocgenError
from components.core.geo import Bounds3857, LonLatBounds, bounds_to_3857, contains, intersects, lonlat_to_3857, tile_at
from components.core.storage import open_store
from components.core.tileset import read_manifest
from components.render.job import RenderSettings, render
from components.render.plan import PairSettings, bbox_plan, grid_plan, pairs_plan
from components.sources.locations import load_locations
from components.sources.osm import header_bounds


def test_a_15_by_15_grid_reproduces_the_original_city_grid_and_abuts_exactly():
    plan = grid_plan((24.94, 60.17), 15)
    assert len(plan) == 225 and len({p.tile_id for p in plan}) == 225
    by_id = {p.tile_id: p.tile for p in plan}
    middle = by_id["r007c007"]
    assert (middle.centre_x_3857, middle.centre_y_3857) == pytest.approx(lonlat_to_3857(24.94, 60.17), abs=1e-6)
    assert middle.m_per_px == pytest.approx(2.0, rel=1e-12)
    for row in range(15):
        for col in range(14):
            left, right = by_id[f"r{row:03d}c{col:03d}"], by_id[f"r{row:03d}c{col + 1:03d}"]
            assert left.bounds_3857.east == pytest.approx(right.bounds_3857.west, abs=1e-6)
    assert by_id["r000c000"].bounds_3857.south == pytest.approx(by_id["r001c000"].bounds_3857.north, abs=1e-6)


def test_grid_overlap_is_exact_in_pixels():
    plan = grid_plan((24.94, 60.17), 3, size_px=256, overlap_px=32)
    left, right = plan[0].tile, plan[1].tile
    assert left.bounds_3857.east - right.bounds_3857.west == pytest.approx(32 * left.mpp_3857, abs=1e-6)


def test_bbox_plan_covers_the_bbox_with_the_fewest_tiles():
    bbox = LonLatBounds(24.93, 60.16, 24.96, 60.18)
    plan = bbox_plan(bbox)
    bbox_3857 = bounds_to_3857(bbox)
    union = np.array([p.tile.bounds_3857 for p in plan])
    assert union[:, 0].min() <= bbox_3857.west and union[:, 2].max() >= bbox_3857.east
    assert union[:, 1].min() <= bbox_3857.south and union[:, 3].max() >= bbox_3857.north
    tile_3857 = plan[0].tile.size_px * plan[0].tile.mpp_3857
    cols, rows = len({p.tile_id[4:] for p in plan}), len({p.tile_id[:4] for p in plan})
    assert (cols - 1) * tile_3857 < bbox_3857.east - bbox_3857.west <= cols * tile_3857
    assert (rows - 1) * tile_3857 < bbox_3857.north - bbox_3857.south <= rows * tile_3857


@pytest.mark.parametrize("kwargs, message", [
    ({"grid": 0}, "--grid 0"),
    ({"grid": 3, "overlap_px": 256}, "--overlap-px"),
])
def test_bad_grids(kwargs, message):
    with pytest.raises(LocgenError, match=message):
        grid_plan((24.94, 60.17), **kwargs)


@pytest.fixture
def city_points():
    rng = np.random.default_rng(1)
    lon, lat = rng.uniform(24.93, 24.96, 60), rng.uniform(60.16, 60.18, 60)
    return np.stack(lonlat_to_3857(lon, lat), axis=1)


def test_training_pairs_around_locations_with_empty_share_and_holdout(city_points):
    area_3857 = bounds_to_3857(LonLatBounds(24.90, 60.14, 25.00, 60.20))
    holdout_3857 = bounds_to_3857(LonLatBounds(24.95, 60.17, 24.96, 60.18))
    settings = PairSettings(pairs=50, empty_share=0.2, seed=4)
    plan = pairs_plan(city_points, np.ones(len(city_points)), area_3857, settings, holdout_3857)
    assert [p.tile_id for p in plan] == [f"p{i:05d}" for i in range(50)]
    holding = [contains(p.tile.bounds_3857, city_points[:, 0], city_points[:, 1]).any() for p in plan]
    assert holding == [True] * 40 + [False] * 10
    assert not any(intersects(p.tile.bounds_3857, holdout_3857) for p in plan)
    for p in plan:  # each tile's ground resolution is exact at its own centre
        assert p.tile.m_per_px == pytest.approx(2.0, rel=1e-12)
    again = pairs_plan(city_points, np.ones(len(city_points)), area_3857, settings, holdout_3857)
    assert [tuple(p.tile) for p in again] == [tuple(p.tile) for p in plan]  # the seed fixes the plan


def test_pairs_follow_the_weights(city_points):
    weights = np.zeros(len(city_points))
    weights[5] = 3.0  # a station with 3 bikes; every other station is empty
    area_3857 = bounds_to_3857(LonLatBounds(24.90, 60.14, 25.00, 60.20))
    plan = pairs_plan(city_points, weights, area_3857, PairSettings(pairs=10, empty_share=0))
    assert all(contains(p.tile.bounds_3857, *city_points[5]) for p in plan)


def test_pairs_that_cannot_avoid_the_holdout_fail_clearly(city_points):
    area_3857 = bounds_to_3857(LonLatBounds(24.90, 60.14, 25.00, 60.20))
    with pytest.raises(LocgenError, match="held-out region"):
        pairs_plan(city_points, np.ones(len(city_points)), area_3857, PairSettings(pairs=3), area_3857)


def test_empty_tiles_that_do_not_fit_fail_clearly():
    area_3857 = tile_at(24.945, 60.17).bounds_3857
    # A location every 100 m: no 512 m tile anywhere near the area is free of them.
    xs_3857, ys_3857 = np.meshgrid(np.arange(area_3857.west - 2000, area_3857.east + 2000, 100),
                             np.arange(area_3857.south - 2000, area_3857.north + 2000, 100))
    dense_3857 = np.stack([xs_3857.ravel(), ys_3857.ravel()], axis=1)
    with pytest.raises(LocgenError, match="lower --empty-share"):
        pairs_plan(dense_3857, np.ones(len(dense_3857)), area_3857, PairSettings(pairs=4, empty_share=0.5))


def test_area_sampling_gives_empty_tiles_as_often_as_the_area_has_empty_places(tmp_path):
    holdout = LonLatBounds(24.9351, 60.1641, 24.9535, 60.1680)
    out = str(tmp_path / "pairs")
    render(RenderSettings(osm=[str(HELSINKI_PBF)], out=out, pairs=120, sampling="area", seed=1, city="helsinki",
                          locations=["osm:amenity=bicycle_rental,amenity=bicycle_parking"], holdout=holdout,
                          progress=False))
    rows = [row for row in read_manifest(open_store(out)) if row["domain"] == "a"]
    assert len(rows) == 120 and all(row["id"].startswith("g") for row in rows)
    empty_tiles = np.mean([not row["points"] for row in rows])
    # The same share, measured on the area: tile-sized windows at random places clear of the held-out box.
    points = load_locations("osm:amenity=bicycle_rental,amenity=bicycle_parking", osm_files=[HELSINKI_PBF]).points
    points_3857 = np.array([lonlat_to_3857(p.lon, p.lat) for p in points])
    area_3857 = bounds_to_3857(header_bounds(HELSINKI_PBF))
    holdout_3857 = bounds_to_3857(holdout)
    side_3857 = rows[0]["bounds_3857"][2] - rows[0]["bounds_3857"][0]
    rng = np.random.default_rng(0)
    empty_windows = []
    while len(empty_windows) < 4000:
        west = rng.uniform(area_3857.west, area_3857.east - side_3857)
        south = rng.uniform(area_3857.south, area_3857.north - side_3857)
        window = Bounds3857(west, south, west + side_3857, south + side_3857)
        if not intersects(window, holdout_3857):
            empty_windows.append(not contains(window, points_3857[:, 0], points_3857[:, 1]).any())
    assert abs(empty_tiles - np.mean(empty_windows)) < 0.1, (empty_tiles, np.mean(empty_windows))
    assert all(not intersects(Bounds3857(*row["bounds_3857"]), holdout_3857) for row in rows)


def test_area_sampling_skips_the_grids_that_lie_wholly_on_a_held_out_strip_and_refuses_a_box_over_everything():
    # Düsseldorf-Bilk's extract, 1989 x 3173 EPSG:3857 m, tiles 817 m: a grid of one row at an offset of more than
    # 781 m touches a 391 m strip along the north edge with every cell.
    area_3857 = bounds_to_3857(LonLatBounds(6.7821, 51.1877, 6.8106, 51.1989))
    strip_3857 = bounds_to_3857(LonLatBounds(6.7821, 51.1967, 6.8106, 51.1989))
    settings = PairSettings(400, sampling="area", seed=0)
    tiles = pairs_plan(np.zeros((0, 2)), np.zeros(0), area_3857, settings, strip_3857)
    assert len(tiles) == 400
    assert not any(intersects(planned.tile.bounds_3857, strip_3857) for planned in tiles)
    with pytest.raises(LocgenError, match="every tile of the training area touches the held-out region"):
        pairs_plan(np.zeros((0, 2)), np.zeros(0), area_3857, settings, area_3857)
