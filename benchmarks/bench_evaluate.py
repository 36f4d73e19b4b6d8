"""Cost of `score_points` (all metrics at 25/50/100 m, grid correlation, both median distances) as the sets grow.

Real points are uniform in a square area around central Helsinki; half of the generated points are real
ones moved by about 15 m (normal, per axis), the other half uniform, so every metric has work to do.
Two series, N generated vs N real points:
- `density`: the area grows with N (10,000 points per 10 x 10 km, a city's density), so the number of
  pairs within the largest radius grows like N: this is where an algorithm's scaling shows;
- `fixed_area`: always 10 x 10 km, so the density grows with N and the pairs within 100 m grow like N^2.
  Each such pair needs a geodesic distance, whatever the algorithm: the metric's cost, not the search's.

Each case runs REPEATS times (fewer for the largest); the best run is reported, with the candidate pairs
(chord <= 100 m) and the geodesic distances computed.
`dense_matching`: `matched_count` alone on the dense city of tests/test_evaluate.py (30,000 real points in
10 x 10 km, half of them copied with a ~20 m jitter: 295,000 pairs within 100 m), where scipy's
maximum_bipartite_matching took over 6 minutes; the test checks the count, this times it (goal: < 10 s).
Prints one JSON document.
Usage: python benchmarks/bench_evaluate.py [--sizes 1000,10000,100000] [--series density,fixed_area]
       [--no-dense-matching]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
from scipy.spatial import cKDTree

from components.core.geo import LonLatBounds
from components.core.matching import matched_count
from components.core.scoring import DEFAULT_RADII_M, SEARCH_MARGIN_M, ecef_m, score_points
from components.extract.baseline import uniform_baseline

CENTRE_LON, CENTRE_LAT = 24.94, 60.17
CITY_POINTS, CITY_SIDE_M = 10_000, 10_000.0
JITTER_M = 15.0
METRES_PER_DEGREE_LAT = 111_320.0  # good to 0.5 % anywhere: only the benchmark's jitter and area use it


def square_around_centre(side_m: float) -> LonLatBounds:
    """A lon/lat square of side_m ground metres around central Helsinki."""
    half_lat = side_m / 2 / METRES_PER_DEGREE_LAT
    half_lon = half_lat / math.cos(math.radians(CENTRE_LAT))
    return LonLatBounds(CENTRE_LON - half_lon, CENTRE_LAT - half_lat, CENTRE_LON + half_lon, CENTRE_LAT + half_lat)


def point_sets(count: int, bbox: LonLatBounds, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(generated, real): real uniform in the area; half the generated ones near real ones, half uniform."""
    rng = np.random.default_rng(seed)
    real = uniform_baseline(count, bbox, seed)
    near = real[: count // 2] + rng.normal(0.0, JITTER_M, (count // 2, 2)) / METRES_PER_DEGREE_LAT * [
        1 / math.cos(math.radians(CENTRE_LAT)), 1.0]
    return np.concatenate([near, uniform_baseline(count - count // 2, bbox, seed + 1)]), real


def candidate_pairs(generated: np.ndarray, real: np.ndarray) -> int:
    """Pairs the KD-tree hands to geopy at the largest radius."""
    radius_m = max(DEFAULT_RADII_M) + SEARCH_MARGIN_M
    return int(cKDTree(ecef_m(generated)).count_neighbors(cKDTree(ecef_m(real)), radius_m))


def run_case(count: int, side_m: float, repeats: int) -> dict:
    """Best of `repeats` timed score_points calls on one pair of sets."""
    bbox = square_around_centre(side_m)
    generated, real = point_sets(count, bbox, seed=count)
    times_s = []
    for _ in range(repeats):
        started_s = time.perf_counter()
        score_points(generated, real, bbox, progress=False)
        times_s.append(time.perf_counter() - started_s)
    pairs = candidate_pairs(generated, real)
    return {"points": count, "side_km": round(side_m / 1000, 2), "candidate_pairs_100m": pairs,
            # pairs at 100 m, the chord-nearest distance both ways, near ties aside
            "geodesic_distances": pairs + 2 * count, "best_s": round(min(times_s), 3),
            "worst_s": round(max(times_s), 3), "runs": repeats,
            "us_per_geodesic": round(min(times_s) / (pairs + 2 * count) * 1e6, 1)}


def dense_city_pairs(count: int = 30_000) -> tuple[np.ndarray, np.ndarray]:
    """The (generated, real) index pairs within 100 m of a dense city: `count` real points in 10 x 10 km,
    half of them copied with a 20 m jitter (the graph on which scipy's matching takes minutes)."""
    bbox = LonLatBounds(24.85, 60.125, 25.03, 60.215)
    real = uniform_baseline(count, bbox, seed=1)
    jitter = np.random.default_rng(2).normal(0.0, 0.0002, (count // 2, 2))
    generated = np.concatenate([real[: count // 2] + jitter, uniform_baseline(count - count // 2, bbox, seed=3)])
    pairs = cKDTree(ecef_m(generated)).sparse_distance_matrix(cKDTree(ecef_m(real)), 100.0, output_type="ndarray")
    return pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)


def dense_matching_case(repeats: int = 3, count: int = 30_000) -> dict:
    """Best of `repeats` timed matched_count calls on the dense city's graph of pairs within 100 m."""
    i, j = dense_city_pairs(count)
    times_s = []
    for _ in range(repeats):
        started_s = time.perf_counter()
        matched = matched_count(i, j, count, count)
        times_s.append(time.perf_counter() - started_s)
    return {"points": count, "pairs_100m": len(i), "matched": matched, "best_s": round(min(times_s), 3),
            "worst_s": round(max(times_s), 3), "runs": repeats, "goal_s": 10.0}


def series(sizes: list[int], side_of) -> list[dict]:
    """Cases of growing size; each with its time ratio to the previous case beside the ratio of sizes."""
    cases = []
    for count in sizes:
        case = run_case(count, side_of(count), repeats=1 if count >= 100_000 else 3)
        if cases:
            previous = cases[-1]
            case["size_ratio"] = round(count / previous["points"], 1)
            case["time_ratio"] = round(case["best_s"] / previous["best_s"], 1)
        cases.append(case)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--series", default="density,fixed_area")
    parser.add_argument("--dense-matching", action=argparse.BooleanOptionalAction, default=True,
                        help="also time matched_count on the dense city (default: yes)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    sides = {"density": lambda count: CITY_SIDE_M * math.sqrt(count / CITY_POINTS),
             "fixed_area": lambda count: CITY_SIDE_M}
    results = {name: series(sizes, sides[name]) for name in args.series.split(",")}
    if args.dense_matching:
        results["dense_matching"] = dense_matching_case()
    print(json.dumps({"benchmark": "score_points", "radii_m": list(DEFAULT_RADII_M), "grid_m": 100.0,
                      "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                  "processor": platform.processor() or platform.machine()},
                      **results}, indent=2))


if __name__ == "__main__":
    main()
