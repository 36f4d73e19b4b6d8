"""Evaluation: metrics on hand-made sets with exact answers, the candidate search's guarantee, the baselines
and the report written end to end."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import HELSINKI_PBF, KOTKA_PBF
from geopy.distance import geodesic
from hypothesis import given, settings
from hypothesis import strategies as st
from s3server import unique_prefix
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from benchmarks.bench_evaluate import dense_city_pairs
from components import __version__
from components.core.errors import LocgenError
from components.core.geo import LonLatBounds, bounds_to_3857, contains, lonlat_from_3857, lonlat_to_3857, mercator_scale
from components.core.matching import matched_count
from components.core.provenance import OSM_ATTRIBUTION, file_sha256
from components.core.scoring import WGS84_A_M, WGS84_E2, ecef_m, geodesic_m, nearest_m, pairs_within, score_points
from components.core.style import LAYER_NAMES
from components.extract.baseline import (
    CLASS_LAYERS,
    CLASSES,
    ROAD_LAYERS,
    class_baseline,
    classify_points,
    fit_class_shares,
    map_margin_3857,
    roads_baseline,
    uniform_baseline,
)
from components.extract.evaluate import (
    EvaluateSettings,
    FitBaselineSettings,
    compare,
    evaluate,
    fit_baseline,
    markdown_report,
)
from components.sources.locations import load_locations
from components.sources.osm import FeatureArrays, MapData, header_bounds, read_osm
from locgen.cli import build_parser

AREA = LonLatBounds(24.90, 60.15, 25.00, 60.20)  # about 5.5 x 5.6 km of Helsinki
HELSINKI_DATA = LonLatBounds(24.9380, 60.1660, 24.9520, 60.1780)  # where the sample extract has data on every side
PARKING = "osm:amenity=bicycle_parking"


def moved(lonlat: np.ndarray, distance_m: float, bearing_deg: float) -> np.ndarray:
    """Each point moved along a geodesic by distance_m at a bearing (geopy's direct problem)."""
    ends = [geodesic(meters=distance_m).destination((lat, lon), bearing_deg) for lon, lat in lonlat]
    return np.array([(end.longitude, end.latitude) for end in ends])


def spaced_points() -> np.ndarray:
    """64 points about 550 m apart inside AREA: no two within any radius scored."""
    lon, lat = np.meshgrid(np.linspace(24.905, 24.975, 8), np.linspace(60.155, 60.19, 8))
    return np.column_stack([lon.ravel(), lat.ravel()])


def test_identical_sets_score_perfectly():
    points = spaced_points()
    metrics = score_points(points, points, AREA)["metrics"]
    for radius in ("25m", "50m", "100m"):
        assert metrics[f"precision@{radius}"] == metrics[f"recall@{radius}"] == metrics[f"f1@{radius}"] == 1.0
    assert metrics["median_truth_to_generated_m"] == metrics["median_generated_to_truth_m"] == 0.0
    assert metrics["grid_spearman"] == pytest.approx(1.0)
    assert "memorisation_share" not in metrics  # no training points given


def test_a_set_moved_30_m_north_is_right_at_50_and_100_m_but_not_at_25_m():
    truth = spaced_points()
    metrics = score_points(moved(truth, 30.0, 0.0), truth, AREA)["metrics"]
    assert metrics["precision@25m"] == metrics["recall@25m"] == metrics["f1@25m"] == 0.0
    assert metrics["precision@50m"] == metrics["recall@50m"] == metrics["f1@100m"] == 1.0
    assert metrics["median_truth_to_generated_m"] == pytest.approx(30.0, abs=1e-6)
    assert metrics["median_generated_to_truth_m"] == pytest.approx(30.0, abs=1e-6)


@pytest.mark.parametrize("generated", [np.zeros((0, 2)), np.array([[24.5, 60.17], [25.5, 60.17]])],
                         ids=["no point", "all outside the area"])
def test_no_generated_point_in_the_area_is_recall_zero_not_an_error(generated):
    score = score_points(generated, spaced_points(), AREA, train_lonlat=spaced_points())
    metrics = score["metrics"]
    assert metrics["recall@25m"] == metrics["f1@100m"] == 0.0
    assert metrics["precision@25m"] is None and metrics["median_generated_to_truth_m"] is None
    assert metrics["grid_spearman"] is None and metrics["memorisation_share"] is None
    assert score["points"]["generated_outside_area"] == len(generated)
    assert "no generated point in the area" in score["notes"][0]


def test_two_generated_points_beside_one_real_point_count_once():
    real = np.array([[24.95, 60.17]])
    generated = np.concatenate([moved(real, 10.0, 90.0), moved(real, 10.0, 270.0)])
    metrics = score_points(generated, real, AREA)["metrics"]
    assert metrics["precision@25m"] == 0.5
    assert metrics["recall@25m"] == 1.0
    assert metrics["f1@25m"] == pytest.approx(2 / 3)


def test_matching_is_maximum_where_greedy_nearest_first_loses_a_pair():
    # R1 --5 m-- G1 --40 m-- R2, and G2 40 m west of R1: nearest-first takes G1-R1 and strands G2,
    # a maximum matching pairs G1-R2 and G2-R1.
    real_1 = np.array([[24.95, 60.17]])
    real_2 = moved(real_1, 45.0, 90.0)
    generated = np.concatenate([moved(real_1, 5.0, 90.0), moved(real_1, 40.0, 270.0)])
    score = score_points(generated, np.concatenate([real_1, real_2]), AREA, radii_m=(50.0,))
    assert score["matched"]["50m"] == 2
    assert score["metrics"]["precision@50m"] == score["metrics"]["recall@50m"] == 1.0


@settings(max_examples=100, deadline=None)
@given(generated=st.integers(0, 12), truth=st.integers(1, 12), seed=st.integers(0, 2 ** 32 - 1),
       density=st.floats(0.0, 1.0))
def test_matched_count_is_the_maximum_matching_scipy_finds_on_small_graphs(generated, truth, seed, density):
    # scipy's maximum_bipartite_matching is right but may take exponential time on large layered graphs
    # (scipy issue #26147): on small random ones it is the reference for our max-flow matching.
    allowed = np.random.default_rng(seed).random((generated, truth)) < density
    i, j = np.nonzero(allowed)
    reference = maximum_bipartite_matching(csr_matrix(allowed.astype(np.int8)), perm_type="column")
    assert matched_count(i, j, generated, truth) == int((reference >= 0).sum())


def test_matched_count_on_a_dense_city_where_scipys_matching_takes_minutes():
    # 30,000 real points in 10 x 10 km, half of them copied with a 20 m jitter: the graph of pairs within
    # 100 m (295,000 edges) took scipy's maximum_bipartite_matching over 6 minutes (scipy 1.17.1).
    # How long matched_count takes on it is measured by benchmarks/bench_evaluate.py (`dense_matching`).
    count = 30_000
    i, j = dense_city_pairs(count)
    matched = matched_count(i, j, count, count)
    assert count // 2 < matched <= count


def grid_cell_centres(bbox: LonLatBounds, grid_m: float) -> list[tuple[float, float]]:
    """Lon/lat of the centres of the evaluation grid's cells, row by row from the south-west (computed here
    from the grid's definition, independently of the module)."""
    area_3857 = bounds_to_3857(bbox)
    cell_3857 = grid_m * mercator_scale((bbox.south + bbox.north) / 2)
    columns = math.ceil((area_3857.east - area_3857.west) / cell_3857)
    rows = math.ceil((area_3857.north - area_3857.south) / cell_3857)
    return [lonlat_from_3857(area_3857.west + (col + 0.5) * cell_3857, area_3857.south + (row + 0.5) * cell_3857)
            for row in range(rows) for col in range(columns)]


def points_per_cell(centres: list[tuple[float, float]], counts: list[int]) -> np.ndarray:
    return np.array([centre for centre, count in zip(centres, counts, strict=True) for _ in range(count)])


def test_rank_correlation_of_counts_on_a_hand_made_grid():
    bbox = LonLatBounds(24.9300, 60.1600, 24.9370, 60.1625)  # 388 x 278 m: 4 x 3 cells of 100 m, the last ones partial
    centres = grid_cell_centres(bbox, 100.0)
    assert len(centres) == 12
    truth = points_per_cell(centres, list(range(1, 13)))
    same_order = points_per_cell(centres, [2 * count for count in range(1, 13)])
    reversed_order = points_per_cell(centres, list(range(12, 0, -1)))
    two_swapped = points_per_cell(centres, [2, 1] + list(range(3, 13)))  # sum of squared rank differences: 2

    def rho(generated: np.ndarray) -> float:
        score = score_points(generated, truth, bbox, grid_m=100.0)
        assert (score["grid"]["columns"], score["grid"]["rows"]) == (4, 3)
        return score["metrics"]["grid_spearman"]

    assert rho(same_order) == pytest.approx(1.0)
    assert rho(reversed_order) == pytest.approx(-1.0)
    assert rho(two_swapped) == pytest.approx(1 - 6 * 2 / (12 * (12 ** 2 - 1)))


def test_rank_correlation_is_null_with_a_reason_when_every_cell_has_the_same_count():
    score = score_points(spaced_points(), spaced_points(), AREA, grid_m=20_000.0)  # one cell
    assert score["metrics"]["grid_spearman"] is None
    assert "a rank correlation needs counts that vary" in score["notes"][0]


def test_memorisation_share_on_a_hand_made_case():
    generated = spaced_points()[:3]
    train = np.concatenate([generated[:1], moved(generated[1:2], 3.0, 45.0), moved(generated[2:3], 10.0, 45.0)])
    score = score_points(generated, spaced_points(), AREA, train_lonlat=train, memorisation_m=5.0)
    assert score["metrics"]["memorisation_share"] == pytest.approx(2 / 3)
    assert score["points"]["train"] == 3


def test_uniform_baseline_is_reproducible_inside_the_area_and_uniform_in_ground_area():
    points = uniform_baseline(1000, AREA, seed=7)
    assert points.shape == (1000, 2)
    assert np.array_equal(points, uniform_baseline(1000, AREA, seed=7))
    assert not np.array_equal(points, uniform_baseline(1000, AREA, seed=8))
    assert contains(AREA, points[:, 0], points[:, 1]).all()
    # From the equator to 80°, the band north of 40° holds (sin 80 - sin 40) / sin 80 = 34.7 % of the area
    # (uniform degrees would put 50 % there); 20,000 draws have a standard error of 0.34 %.
    latitudes = uniform_baseline(20_000, LonLatBounds(0.0, 0.0, 10.0, 80.0), seed=1)[:, 1]
    expected = (math.sin(math.radians(80)) - math.sin(math.radians(40))) / math.sin(math.radians(80))
    assert np.mean(latitudes >= 40) == pytest.approx(expected, abs=0.015)


@pytest.fixture(scope="module")
def helsinki_map():
    return read_osm([HELSINKI_PBF], HELSINKI_DATA, margin_3857=0.0)


def test_roads_baseline_points_lie_on_roads_of_the_helsinki_sample(helsinki_map):
    points = roads_baseline(500, HELSINKI_DATA, helsinki_map, seed=3)
    assert np.array_equal(points, roads_baseline(500, HELSINKI_DATA, helsinki_map, seed=3))
    assert contains(HELSINKI_DATA, points[:, 0], points[:, 1]).all()
    features = helsinki_map.features
    road_lines = [shapely.LineString(features.coords_3857[features.ring_offsets[ring]:features.ring_offsets[ring + 1]])
                  for feature, layer in enumerate(features.layer) if LAYER_NAMES[layer] in ROAD_LAYERS
                  for ring in range(features.feature_rings[feature], features.feature_rings[feature + 1])]
    tree = shapely.STRtree(road_lines)
    points_3857 = shapely.points(np.column_stack(lonlat_to_3857(points[:, 0], points[:, 1])))
    _, distance_3857 = tree.query_nearest(points_3857, return_distance=True, all_matches=False)
    ground_m = distance_3857 / mercator_scale(HELSINKI_DATA.north)  # the largest scale in the area
    assert ground_m.max() < 1.0
    assert {"footway", "cycleway", "road_minor"} <= set(ROAD_LAYERS) and "railway" not in ROAD_LAYERS


def test_roads_baseline_without_a_road_in_the_area_is_one_clear_error(helsinki_map):
    far_away = LonLatBounds(24.0, 60.0, 24.001, 60.001)
    with pytest.raises(LocgenError, match=r"^no road or path .* inside bbox 24,60,24.001,60.001 .*--osm") as error:
        roads_baseline(10, far_away, helsinki_map, seed=0)
    assert "\n" not in str(error.value)


# --- the fitted baseline: map classes -------------------------------------------------------------

HELSINKI_POINTS = "osm:amenity=bicycle_rental,amenity=bicycle_parking"
ORIGIN = (25.0, 60.0)  # of the hand-made map: EPSG:3857 is 2 m per ground metre at 60° N


def ground_to_lonlat(offsets_m) -> np.ndarray:
    """(N, 2) lon/lat of points given in ground metres east and north of ORIGIN (exact to millimetres here)."""
    x0, y0 = lonlat_to_3857(*ORIGIN)
    scale = mercator_scale(ORIGIN[1])
    offsets = np.asarray(offsets_m, np.float64).reshape(-1, 2)
    return np.column_stack(lonlat_from_3857(x0 + offsets[:, 0] * scale, y0 + offsets[:, 1] * scale))


def hand_made_map(features: list[tuple[str, list[list[tuple[float, float]]]]]) -> MapData:
    """A map of (layer, rings in ground metres from ORIGIN) features, as read_osm gives it."""
    features = sorted(features, key=lambda feature: LAYER_NAMES.index(feature[0]))
    x0, y0 = lonlat_to_3857(*ORIGIN)
    rings = [[(x0 + x * mercator_scale(ORIGIN[1]), y0 + y * mercator_scale(ORIGIN[1])) for x, y in ring]
             for _, feature_rings in features for ring in feature_rings]
    coords = np.array([vertex for ring in rings for vertex in ring])
    ring_offsets = np.concatenate([[0], np.cumsum([len(ring) for ring in rings])])
    feature_rings = np.concatenate([[0], np.cumsum([len(feature_rings) for _, feature_rings in features])])
    bbox = np.array([[*np.min(coords[ring_offsets[feature_rings[f]]:ring_offsets[feature_rings[f + 1]]], axis=0),
                      *np.max(coords[ring_offsets[feature_rings[f]]:ring_offsets[feature_rings[f + 1]]], axis=0)]
                     for f in range(len(features))])
    layer = np.array([LAYER_NAMES.index(name) for name, _ in features])
    return MapData(FeatureArrays(coords, ring_offsets.astype(np.int64), feature_rings.astype(np.int64), bbox, layer),
                   [], 0.0)


def square(west: float, south: float, east: float, north: float) -> list[tuple[float, float]]:
    return [(west, south), (east, south), (east, north), (west, north), (west, south)]


# A residential road (7 m wide) along y = 0 crossed by a footway (2 m) along x = 0, a primary road
# (13 m) along y = 150, a railway (3 m) along y = -150, a building, a park with a hole, a lake.
HAND_MADE = [("road_minor", [[(-100, 0), (100, 0)]]), ("footway", [[(0, -100), (0, 100)]]),
             ("road_primary", [[(-100, 150), (100, 150)]]), ("railway", [[(-100, -150), (100, -150)]]),
             ("building", [square(30, 20, 70, 60)]), ("green", [square(-100, 20, -20, 100), square(-80, 40, -40, 80)]),
             ("water", [square(-100, -100, -20, -20)])]


def test_every_style_layer_is_in_exactly_one_map_class():
    layers = [layer for layers in CLASS_LAYERS.values() for layer in layers]
    assert sorted(layers) == sorted(LAYER_NAMES)
    assert CLASSES[-1] == "none" and CLASS_LAYERS["none"] == ()


@pytest.mark.parametrize(("offset_m", "expected"), [
    ((50, 3), "minor_road"),  # on the drawn road (3.5 m from its centre line to its edge)
    ((50, 8), "minor_road"),  # 4.5 m from its edge: within 5 m
    ((50, 9.2), "none"),  # 5.7 m from the road's edge, 10.8 m from the building
    ((50, 16), "building"),  # 4 m from the outline
    ((50, 40), "none"),  # inside the building, 10 m from its outline: only the outline counts
    ((0.5, 0.5), "minor_road"),  # on the road and the footway: the tie goes to the class listed first
    ((0.5, 50), "path"),
    ((50, 160), "major_road"),  # 10 m from the centre line, 3.5 m from the drawn edge
    ((50, -146), "other"),  # the railway
    ((-60, 30), "open_land"),  # in the park, 10 m from any line
    ((-60, 60), "none"),  # in the park's hole
    ((-19, 50), "none"),  # 1 m outside the park: areas count inside only
    ((-60, -22), "water"),
])
def test_a_place_has_the_class_of_the_nearest_drawn_feature_within_5_m_else_of_its_area(offset_m, expected):
    assert classify_points(ground_to_lonlat([offset_m]), hand_made_map(HAND_MADE)).tolist() == [expected]


def test_the_fitted_baseline_places_points_only_where_their_class_is_on_a_hand_made_map():
    scene = hand_made_map(HAND_MADE)
    bbox = LonLatBounds(*ground_to_lonlat([(-100, -160)])[0], *ground_to_lonlat([(100, 170)])[0])
    park = shapely.Polygon(square(-100, 20, -20, 100), [square(-80, 40, -40, 80)])
    in_park = class_baseline(2000, bbox, scene, {"open_land": 1.0}, seed=1)
    x0, y0 = lonlat_to_3857(*ORIGIN)
    ground = np.column_stack(lonlat_to_3857(in_park[:, 0], in_park[:, 1])) - (x0, y0)
    assert shapely.contains_xy(park, *(ground / mercator_scale(ORIGIN[1])).T).all()
    on_footway = class_baseline(2000, bbox, scene, {"path": 1.0}, seed=1)
    ground = (np.column_stack(lonlat_to_3857(on_footway[:, 0], on_footway[:, 1])) - (x0, y0)) / mercator_scale(60.0)
    assert np.abs(ground[:, 0]).max() < 1e-6  # on the footway's centre line
    assert np.abs(ground[:, 1]).min() >= 3.5 - 1e-6  # but not where it crosses the road: that place is the road's
    # A class with no place in the area is left out: its share goes to the others.
    only_roads = class_baseline(500, bbox, scene, {"minor_road": 0.5, "other": 0.0, "major_road": 0.5}, seed=2)
    assert set(classify_points(only_roads, scene)) == {"minor_road", "major_road"}


@pytest.fixture(scope="module")
def helsinki_fit():
    """Helsinki's map over the extract, its bike points (all inside) and the shares fitted on them."""
    extent = header_bounds(HELSINKI_PBF)
    map_data = read_osm([HELSINKI_PBF], extent, margin_3857=map_margin_3857(extent))
    points = np.array([(point.lon, point.lat)
                       for point in load_locations(HELSINKI_POINTS, osm_files=[HELSINKI_PBF]).points])
    return extent, map_data, points, fit_class_shares(points, map_data)


def test_class_shares_fitted_on_helsinkis_bike_points(helsinki_fit):
    _, _, points, shares = helsinki_fit
    assert len(points) == 68
    # 14 by a major road, 18 a minor one, 21 a path, 8 a building, 7 nowhere near: none in parks or water.
    assert shares == pytest.approx({"major_road": 14 / 68, "minor_road": 18 / 68, "path": 21 / 68,
                                    "building": 8 / 68, "other": 0.0, "open_land": 0.0, "water": 0.0,
                                    "none": 7 / 68})
    assert math.fsum(shares.values()) == pytest.approx(1.0)


def test_the_fitted_baseline_gives_its_shares_back_on_the_training_city(helsinki_fit):
    extent, map_data, _, shares = helsinki_fit
    points = class_baseline(20_000, extent, map_data, shares, seed=4)
    assert points.shape == (20_000, 2) and contains(extent, points[:, 0], points[:, 1]).all()
    refitted = fit_class_shares(points, map_data)
    # A place is drawn only where it has its class, so the refit differs by sampling noise alone: a
    # share of 0.3 from 20,000 draws has a standard error of 0.0032; 0.02 is six of them.
    assert {name: abs(refitted[name] - shares[name]) for name in CLASSES} == pytest.approx(
        dict.fromkeys(CLASSES, 0.0), abs=0.02)
    assert {name for name in CLASSES if refitted[name] > 0} == {name for name in CLASSES if shares[name] > 0}
    assert np.array_equal(points[:100], class_baseline(20_000, extent, map_data, shares, seed=4)[:100])
    assert not np.array_equal(points, class_baseline(20_000, extent, map_data, shares, seed=5))


def test_the_fitted_baseline_samples_another_city_by_the_training_citys_shares(helsinki_fit):
    shares = helsinki_fit[3]
    kotka = header_bounds(KOTKA_PBF)
    kotka_map = read_osm([KOTKA_PBF], kotka, margin_3857=map_margin_3857(kotka))
    points = class_baseline(5_000, kotka, kotka_map, shares, seed=0)
    assert np.array_equal(points, class_baseline(5_000, kotka, kotka_map, shares, seed=0))
    assert contains(kotka, points[:, 0], points[:, 1]).all()
    refitted = fit_class_shares(points, kotka_map)
    assert all(abs(refitted[name] - shares[name]) < 0.03 for name in CLASSES)  # 5,000 draws: 5 standard errors
    # Kotka's sample has no lake: shares of water alone have no place there.
    with pytest.raises(LocgenError, match=r"^none of the classes with a share \(water\) has a place inside bbox "
                                          r"26.93,60.52,26.97,60.54") as error:
        class_baseline(10, kotka, kotka_map, {"water": 1.0}, seed=0)
    assert "\n" not in str(error.value)


# --- the candidate search ------------------------------------------------------------------------

@pytest.mark.parametrize("lat", [0.0, 30.0, 45.0, 60.0, 75.0, 85.0])
def test_chord_never_exceeds_the_geodesic_and_falls_short_by_at_most_the_curvature_bound(lat):
    tightest_radius_m = WGS84_A_M * (1 - WGS84_E2)  # meridional radius of curvature at the equator
    start = np.array([[24.95, lat]])
    for distance_m in (1.0, 100.0, 1_000.0, 10_000.0):
        for bearing in range(0, 360, 30):
            end = moved(start, distance_m, bearing)
            geodesic_distance_m = geodesic_m(start, end)[0]
            chord_m = float(np.linalg.norm(ecef_m(end) - ecef_m(start)))
            # 1e-8 m: float64 ECEF coordinates (about 6.4e6 m) and their differences round at about 1e-9 m.
            assert chord_m <= geodesic_distance_m + 1e-8
            assert geodesic_distance_m - chord_m <= geodesic_distance_m ** 3 / (24 * tightest_radius_m ** 2) + 1e-8


def test_distances_are_geopys_in_metres():
    a, b = np.array([[24.95, 60.17]]), np.array([[26.95, 60.53]])
    assert geodesic_m(a, b)[0] == pytest.approx(geodesic((60.17, 24.95), (60.53, 26.95)).meters, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(lat=st.sampled_from([-85.0, -60.0, -33.9, 0.0, 45.0, 60.17, 78.2, 85.0]) | st.floats(-85.0, 85.0),
       lon=st.floats(-180.0, 180.0),
       radius_m=st.floats(1.0, 500.0),
       ring=st.lists(st.tuples(st.floats(0.0, 360.0), st.just(1.0) | st.floats(0.9, 1.1)), min_size=1, max_size=10))
def test_candidate_search_never_misses_a_pair_geopy_puts_within_the_radius(lat, lon, radius_m, ring):
    # A centre and points about one radius from it, in every direction (across the antimeridian, near the
    # poles): the pairs with the centre straddle the radius, those between ring points fall anywhere.
    centre = np.array([[lon, lat]])
    points = np.concatenate([centre] + [moved(centre, factor * radius_m, bearing) for bearing, factor in ring])
    brute_m = np.array([[geodesic_m(points[i:i + 1], points[j:j + 1])[0] for j in range(len(points))]
                        for i in range(len(points))])
    i, j, distance_m = pairs_within(points, points, radius_m)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(zip(*np.nonzero(brute_m <= radius_m), strict=True))
    assert np.array_equal(distance_m, brute_m[i, j])
    others = points[1:]
    assert np.array_equal(nearest_m(points[:1], others), brute_m[0, 1:].min(keepdims=True))


# --- verdicts -------------------------------------------------------------------------------------

def test_verdicts_compare_in_each_metrics_direction_and_null_when_a_value_is_missing():
    model = {"precision@25m": 0.5, "median_truth_to_generated_m": 20.0, "grid_spearman": None,
             "memorisation_share": 0.1}
    baselines = {"uniform": {"precision@25m": 0.1, "median_truth_to_generated_m": 30.0, "grid_spearman": 0.1,
                             "memorisation_share": 0.0},
                 "roads": {"precision@25m": 0.5, "median_truth_to_generated_m": 10.0, "grid_spearman": 0.2,
                           "memorisation_share": 0.0}}
    assert compare(model, baselines) == {
        "precision@25m": {"uniform": True, "roads": False, "beats_baselines": False},  # a tie does not beat
        "median_truth_to_generated_m": {"uniform": True, "roads": False, "beats_baselines": False},
        "grid_spearman": {"uniform": None, "roads": None, "beats_baselines": None},
    }


# --- the evaluation stage end to end -------------------------------------------------------------------

def write_csv(path: Path, lonlat: np.ndarray) -> str:
    lines = ["latitude,longitude"] + [f"{lat!r},{lon!r}" for lon, lat in lonlat.tolist()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def parking_in_area() -> np.ndarray:
    points = np.array([(point.lon, point.lat) for point in load_locations(PARKING, osm_files=[HELSINKI_PBF]).points])
    return points[contains(HELSINKI_DATA, points[:, 0], points[:, 1])]


def test_evaluate_writes_a_json_and_a_markdown_report(tmp_path):
    real = parking_in_area()
    outside = np.array([[24.90, 60.17], [25.00, 60.17], [24.94, 60.19]])
    generated = np.concatenate([moved(real[:20], 10.0, 90.0), uniform_baseline(10, HELSINKI_DATA, seed=5), outside])
    generated_csv = write_csv(tmp_path / "generated.csv", generated)
    out = tmp_path / "eval" / "report.json"
    out.parent.mkdir()
    report = evaluate(EvaluateSettings(generated=generated_csv, truth=[PARKING], bbox=HELSINKI_DATA, out=str(out),
                                       osm=[str(HELSINKI_PBF)], seed=11, progress=False))

    assert json.loads(out.read_text()) == report
    inputs = report["inputs"]
    assert inputs["generated"] == {"uri": generated_csv, "kind": "csv", "sha256": file_sha256(Path(generated_csv)),
                                   "points": 33, "weight_zero": 0, "in_area": 30, "outside_area": 3}
    assert inputs["truth"][0]["uri"] == PARKING and inputs["truth"][0]["in_area"] == len(real)
    assert inputs["osm"] == [{"uri": str(HELSINKI_PBF), "kind": "osm", "sha256": file_sha256(HELSINKI_PBF)}]
    assert (inputs["bbox"], inputs["seed"], inputs["radii_m"]) == (list(HELSINKI_DATA), 11, [25.0, 50.0, 100.0])
    assert report["locgen_version"] == __version__ and report["attribution"] == OSM_ATTRIBUTION
    assert report["model"]["points"]["generated_outside_area"] == 3
    assert report["model"]["metrics"]["precision@25m"] == pytest.approx(20 / 30)
    assert report["model"]["metrics"]["recall@25m"] == pytest.approx(20 / len(real))
    assert set(report["baselines"]) == {"uniform", "roads"}
    assert all(score["points"]["generated"] == 30 for score in report["baselines"].values())
    assert report["verdicts"]["precision@25m"] == {"uniform": True, "roads": True, "beats_baselines": True}
    assert report["verdict"]["metrics_compared"] == 3 * 3 + 3

    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert markdown == markdown_report(report)
    assert "| metric | model | uniform | roads | beats baselines |" in markdown
    assert "| precision within 25 m | 0.667 |" in markdown
    assert f"**Verdict:** {report['verdict']['line']}." in markdown and OSM_ATTRIBUTION in markdown
    assert sorted(path.name for path in out.parent.iterdir()) == ["report.json", "report.md"]


def test_fit_baseline_writes_the_shares_of_the_training_cities_points(tmp_path, helsinki_fit):
    kotka_point = np.array([[26.95, 60.53]])
    kotka_csv = write_csv(tmp_path / "kotka.csv", kotka_point)
    out = tmp_path / "shares.json"

    def fit(*osm: Path) -> dict:
        args = build_parser().parse_args(["fit-baseline", "--locations", HELSINKI_POINTS, "--locations", kotka_csv,
                                          *(f"--osm={path}" for path in osm), "--out", str(out)])
        summary = args.run(args)
        document = json.loads(out.read_text())
        assert summary == {"out": str(out), "points": document["points_fitted"], "shares": document["shares"]}
        return document

    # With Helsinki's map only, the Kotka point lies outside the data: it is left out.
    document = fit(HELSINKI_PBF)
    assert (document["points_fitted"], document["points_outside_osm"]) == (68, 1)
    assert document["shares"] == pytest.approx(helsinki_fit[3]) and document["near_m"] == 5.0
    assert document["points"] == {"major_road": 14, "minor_road": 18, "path": 21, "building": 8, "other": 0,
                                  "open_land": 0, "water": 0, "none": 7}
    assert document["classes"] == {name: list(layers) for name, layers in CLASS_LAYERS.items()}
    assert [source["uri"] for source in document["locations"]] == [HELSINKI_POINTS, kotka_csv]
    assert document["osm"] == [{"uri": str(HELSINKI_PBF), "kind": "osm", "sha256": file_sha256(HELSINKI_PBF)}]
    assert document["attribution"] == OSM_ATTRIBUTION
    # Two cities: their points pooled, each classed on its own map.
    document = fit(HELSINKI_PBF, KOTKA_PBF)
    assert (document["points_fitted"], document["points_outside_osm"]) == (69, 0)
    kotka_class = classify_points(kotka_point, read_osm([KOTKA_PBF], header_bounds(KOTKA_PBF)))[0]
    assert document["points"][kotka_class] == {"major_road": 14, "minor_road": 18, "path": 21, "building": 8,
                                               "none": 7}.get(kotka_class, 0) + 1


@pytest.fixture(scope="module")
def helsinki_shares(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "shares.json"
    fit_baseline(FitBaselineSettings(locations=[HELSINKI_POINTS], osm=[str(HELSINKI_PBF)], out=str(out)))
    return out


def test_evaluate_with_class_shares_reports_a_third_baseline_fitted(tmp_path, helsinki_shares, helsinki_fit):
    real = parking_in_area()
    generated = write_csv(tmp_path / "generated.csv", np.concatenate([moved(real[:20], 10.0, 90.0),
                                                                      uniform_baseline(10, HELSINKI_DATA, seed=5)]))
    report = evaluate(EvaluateSettings(generated=generated, truth=[PARKING], bbox=HELSINKI_DATA,
                                       out=str(tmp_path / "report.json"), osm=[str(HELSINKI_PBF)],
                                       class_shares=str(helsinki_shares), seed=11, progress=False))
    assert list(report["baselines"]) == ["uniform", "roads", "fitted"]
    assert report["baselines"]["fitted"]["points"]["generated"] == 30
    assert report["inputs"]["class_shares"] == {"uri": str(helsinki_shares), "sha256": file_sha256(helsinki_shares),
                                                "near_m": 5.0, "shares": pytest.approx(helsinki_fit[3])}
    assert set(report["verdicts"]["precision@25m"]) == {"uniform", "roads", "fitted", "beats_baselines"}
    assert "(uniform, roads, fitted)" in report["verdict"]["line"] and "fitted_baseline" in report["method"]
    markdown = (tmp_path / "report.md").read_text()
    assert "| metric | model | uniform | roads | fitted | beats baselines |" in markdown
    assert "|---|---:|---:|---:|---:|---|" in markdown


def test_evaluate_reads_class_shares_from_s3(s3_env, tmp_path, helsinki_shares):
    prefix = unique_prefix()
    s3_env.client().fput_object(s3_env.bucket, f"{prefix}/shares.json", str(helsinki_shares))
    report = evaluate(EvaluateSettings(generated=write_csv(tmp_path / "g.csv", parking_in_area()), truth=[PARKING],
                                       bbox=HELSINKI_DATA, out=str(tmp_path / "report.json"), osm=[str(HELSINKI_PBF)],
                                       class_shares=f"s3://{s3_env.bucket}/{prefix}/shares.json", progress=False))
    assert report["inputs"]["class_shares"]["sha256"] == file_sha256(helsinki_shares)
    assert "fitted" in report["baselines"]


@pytest.mark.parametrize(("content", "problem"), [
    ("major_road: 1\n", r"not JSON \(Expecting value"),
    ("[0.5, 0.5]", r"not a JSON object with the shares"),
    ('{"near_m": 5}', r"no shares: an object of classes \(major_road, .*, none\)"),
    ('{"shares": {"major_road": 0.5, "path": 0.4}}', r"the shares sum to 0.9, not 1"),
    ('{"shares": {"road": 1.0}}', r"unknown class 'road' \(the classes are major_road, minor_road, path, "),
    ('{"shares": {"path": 1.5, "none": -0.5}}', r"the share of path, none is not a number from 0 to 1"),
    ('{"shares": {"path": 1.0}, "near_m": -1}', r"near_m -1 is not a positive number of ground metres"),
], ids=["not json", "not an object", "no shares", "sum 0.9", "unknown class", "out of range", "near_m"])
def test_a_malformed_class_shares_file_is_one_clear_error_naming_it_and_the_fix(tmp_path, content, problem):
    shares = tmp_path / "shares.json"
    shares.write_text(content)
    out = tmp_path / "report.json"
    with pytest.raises(LocgenError) as error:
        evaluate(EvaluateSettings(generated=write_csv(tmp_path / "g.csv", spaced_points()), truth=[PARKING],
                                  bbox=HELSINKI_DATA, out=str(out), osm=[str(HELSINKI_PBF)], class_shares=str(shares),
                                  progress=False))
    message = str(error.value)
    assert re.match(rf"^--class-shares {re.escape(str(shares))}: {problem}", message), message
    assert message.endswith(f"; write it with locgen fit-baseline --locations SRC --osm FILE --out {shares}")
    assert "\n" not in message and not out.exists()


def test_class_shares_without_osm_data_is_one_clear_error(tmp_path, helsinki_shares):
    with pytest.raises(LocgenError, match=r"^--class-shares .*shares.json: the fitted baseline places its points on "
                                          r"the map of the area; give --osm data of the area too$"):
        evaluate(EvaluateSettings(generated=write_csv(tmp_path / "g.csv", spaced_points()),
                                  truth=[write_csv(tmp_path / "t.csv", spaced_points())], bbox=AREA,
                                  out=str(tmp_path / "report.json"), class_shares=str(helsinki_shares),
                                  progress=False))


def test_evaluate_reads_and_writes_s3_and_reports_memorisation(s3_env, tmp_path):
    prefix = f"s3://{s3_env.bucket}/{unique_prefix()}"
    real = spaced_points()
    generated_key = f"{prefix.split('/', 3)[3]}/generated.csv"
    s3_env.client().fput_object(s3_env.bucket, generated_key, write_csv(tmp_path / "g.csv", real[:40]))
    report = evaluate(EvaluateSettings(generated=f"{prefix}/generated.csv", truth=[write_csv(tmp_path / "t.csv", real)],
                                       bbox=AREA, out=f"{prefix}/eval/report.json",
                                       train_points=[write_csv(tmp_path / "train.csv", real[:10])], progress=False))
    assert report["model"]["metrics"]["memorisation_share"] == pytest.approx(10 / 40)
    assert "roads" not in report["baselines"] and "attribution" not in report
    assert s3_env.object_names(prefix.split("/", 3)[3] + "/eval/") == {
        f"{prefix.split('/', 3)[3]}/eval/report.json", f"{prefix.split('/', 3)[3]}/eval/report.md"}


def test_evaluate_scores_an_empty_generated_file_as_recall_zero(tmp_path):
    empty_csv = write_csv(tmp_path / "generated.csv", np.zeros((0, 2)))
    report = evaluate(EvaluateSettings(generated=empty_csv, truth=[PARKING], bbox=HELSINKI_DATA,
                                       out=str(tmp_path / "report.json"), osm=[str(HELSINKI_PBF)], progress=False))
    assert report["model"]["metrics"]["recall@50m"] == 0.0 and report["model"]["metrics"]["precision@50m"] is None
    assert report["inputs"]["generated"]["points"] == 0
    assert report["verdict"]["beats_baselines"] is False
    assert "n/a" in (tmp_path / "report.md").read_text()


def test_a_truth_source_with_no_point_in_the_area_is_one_clear_error_and_writes_nothing(tmp_path):
    generated = write_csv(tmp_path / "generated.csv", parking_in_area())
    kotka = write_csv(tmp_path / "kotka.csv", np.array([[26.95, 60.53], [26.96, 60.52]]))
    out = tmp_path / "report.json"
    with pytest.raises(LocgenError) as error:
        evaluate(EvaluateSettings(generated=generated, truth=[PARKING, kotka], bbox=HELSINKI_DATA, out=str(out),
                                  osm=[str(HELSINKI_PBF)], progress=False))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{kotka}: none of its 2 located points")
    assert "--bbox 24.938,60.166,24.952,60.178" in message and "give a --bbox that covers" in message
    assert not out.exists()


@pytest.mark.parametrize(("changes", "expected"), [
    ({"bbox": LonLatBounds(25.0, 60.2, 24.9, 60.1)}, r"^--bbox: 25.0,60.2,24.9,60.1 is empty or inverted"),
    ({"bbox": LonLatBounds(24.9, 91.0, 25.0, 92.0)}, r"^--bbox: latitude 91.0 is outside"),
    ({"out": "report.md"}, r"^--out report.md: the Markdown report would overwrite it"),
    ({"osm": ["s3://bucket/helsinki.osm.pbf"]}, r"^--osm s3://bucket/helsinki.osm.pbf: no such local file"),
    ({"radii_m": (25.0, 0.0)}, r"^radius 0.0 m: give a positive number of metres"),
    ({"truth": []}, r"^no truth source"),
])
def test_bad_settings_are_one_clear_error(tmp_path, changes, expected):
    base = {"generated": write_csv(tmp_path / "g.csv", spaced_points()), "truth": [PARKING], "bbox": HELSINKI_DATA,
            "out": str(tmp_path / "report.json"), "osm": [str(HELSINKI_PBF)], "progress": False}
    with pytest.raises(LocgenError, match=expected):
        evaluate(EvaluateSettings(**{**base, **changes}))
