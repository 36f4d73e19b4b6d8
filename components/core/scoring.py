"""Scoring generated points against real ones: the evaluation's metrics, in one home (the evaluation
stage reports them; training validates on its held-out boxes with them).

What is scored (`score_points`), in an area (a lon/lat bbox, west/south inclusive, east/north exclusive):
- Points outside the area are dropped first, generated and real alike; training points are not (a
  generated point near the edge may copy one just outside).
- Precision, recall and F1 at each radius r: generated and real points are matched one to one, a pair
  allowed when their distance is at most r, by maximum-cardinality bipartite matching (as a unit max
  flow, see `matched_count`), so two generated points beside one real point count once and no greedy
  order loses a match.
  precision = matched / generated, recall = matched / real, F1 = 2 matched / (generated + real).
- The median distance from each real point to the nearest generated one, and back.
- Spearman's rank correlation of the counts per cell of a grid over the area (see `Grid`).
- Memorisation: the share of generated points within `memorisation_m` of a training point.
- With no generated point in the area (a model that found nothing is a result, not a bad input):
  recall and F1 are 0; precision, both median distances, the grid correlation and the memorisation
  share are null, since nothing generated is there to measure; `notes` says why.

Distances are geodesic on the WGS84 ellipsoid, by geopy, but only for candidate pairs. Candidates come
from a KD-tree on earth-centred (ECEF) coordinates of the points on the ellipsoid: the straight chord
between two points of a surface is never longer than any path on it, the geodesic included, so every
pair with a geodesic distance <= r has a chord <= r, at any latitude and in an area of any size. The
search radius is r + 1 mm: float64 ECEF coordinates (about 6.4e6 m) round at 1e-9 m, and geopy is
exact to nanometres, so the millimetre only absorbs rounding. The chord is also short by very little:
a geodesic's curvature is at most that of the ellipsoid's tightest normal section, 1 / (a (1 - e^2))
with a (1 - e^2) = 6,335,439 m, and by Schur's comparison theorem a curve of length s with curvature
at most 1/rho has a chord of at least 2 rho sin(s / 2 rho), so s - chord <= s^3 / (24 rho^2): 1e-9 m
at 100 m, 1e-3 m at 10 km. Candidate sets are thus barely larger than the pairs they contain.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
from geopy.distance import ELLIPSOIDS, geodesic
from scipy.spatial import cKDTree
from scipy.stats import spearmanr
from tqdm import tqdm

from components.core.errors import LocgenError
from components.core.geo import (
    LonLatBounds,
    bbox_text,
    bounds_to_3857,
    check_bbox,
    contains,
    lonlat_to_3857,
    mercator_scale,
)
from components.core.matching import matched_count

DEFAULT_RADII_M = (25.0, 50.0, 100.0)
_A_KM, _, _FLATTENING = ELLIPSOIDS["WGS-84"]  # geopy's WGS84, so the chords and the geodesics share one ellipsoid
WGS84_A_M = _A_KM * 1000.0
WGS84_E2 = _FLATTENING * (2.0 - _FLATTENING)
SEARCH_MARGIN_M = 1e-3  # added to chord search radii: absorbs float rounding (see the module docstring)
MAX_GRID_CELLS = 10_000_000  # two count vectors of this size take 160 MB: a finer grid is a mistake
# One geopy calculator for every pair: a new geodesic() per pair rebuilds geographiclib's series
# coefficients each time, which is 40 % of the cost of a distance.
_GEODESIC = geodesic()


class Grid(NamedTuple):
    """The cells of the rank correlation: squares in EPSG:3857, `grid_m` ground metres wide at mid-latitude.

    Cell (col, row) covers x in [west_3857 + col * cell_3857, west_3857 + (col + 1) * cell_3857) and y
    likewise from south_3857 (rows grow northwards). The cell size is grid_m * sec(mid-latitude) EPSG:3857
    metres, the mid-latitude being (south + north) / 2 of the bbox in degrees: the tiles' convention
    (ground size at the centre). The grid starts at the bbox's south-west corner and has
    ceil(width / cell) columns and ceil(height / cell) rows: the last column and row may reach past
    the bbox (only points inside the bbox are counted).
    """

    west_3857: float
    south_3857: float
    cell_3857: float
    columns: int
    rows: int


# --- distances ----------------------------------------------------------------------------------

def ecef_m(lonlat: np.ndarray) -> np.ndarray:
    """(N, 2) lon/lat in degrees -> (N, 3) earth-centred x, y, z in metres on the WGS84 ellipsoid."""
    lon, lat = np.radians(lonlat[:, 0]), np.radians(lonlat[:, 1])
    normal_radius_m = WGS84_A_M / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    return np.column_stack([normal_radius_m * np.cos(lat) * np.cos(lon),
                            normal_radius_m * np.cos(lat) * np.sin(lon),
                            normal_radius_m * (1.0 - WGS84_E2) * np.sin(lat)])


def geodesic_m(a_lonlat: np.ndarray, b_lonlat: np.ndarray, *, progress: bool = False,
               desc: str = "geodesic distances") -> np.ndarray:
    """Geodesic distance (WGS84, geopy) in metres between row k of `a_lonlat` and row k of `b_lonlat`."""
    pairs = zip(a_lonlat[:, 1].tolist(), a_lonlat[:, 0].tolist(), b_lonlat[:, 1].tolist(), b_lonlat[:, 0].tolist())
    # delay: a bar shows only for work that lasts, not for each of the many quick calls on small sets.
    bar = tqdm(pairs, total=len(a_lonlat), desc=desc, unit="pair", disable=not progress, leave=False, delay=1.0)
    # geopy measures in kilometres: its ellipsoids are given in kilometres.
    distances_km = (_GEODESIC.measure((lat_a, lon_a), (lat_b, lon_b)) for lat_a, lon_a, lat_b, lon_b in bar)
    return np.fromiter(distances_km, dtype=np.float64, count=len(a_lonlat)) * 1000.0


def pairs_within(a_lonlat: np.ndarray, b_lonlat: np.ndarray, radius_m: float, *,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j) with geodesic(a[i], b[j]) <= radius_m, and that distance: (i, j, distance_m).

    Candidates are the pairs whose ECEF chord is within radius_m + SEARCH_MARGIN_M (the chord never
    exceeds the geodesic, so none is missed); only they are measured on the ellipsoid.
    """
    if not len(a_lonlat) or not len(b_lonlat):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    candidates = cKDTree(ecef_m(a_lonlat)).sparse_distance_matrix(
        cKDTree(ecef_m(b_lonlat)), radius_m + SEARCH_MARGIN_M, output_type="ndarray")
    i, j = candidates["i"].astype(np.int64), candidates["j"].astype(np.int64)
    distance_m = geodesic_m(a_lonlat[i], b_lonlat[j], progress=progress, desc=f"pairs within {radius_m:g} m")
    keep = distance_m <= radius_m
    return i[keep], j[keep], distance_m[keep]


def nearest_m(from_lonlat: np.ndarray, to_lonlat: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """Geodesic distance in metres from each point of `from_lonlat` to the nearest point of `to_lonlat`.

    The KD-tree's chord-nearest point gives an upper bound d; a point geodesically nearer than d has a
    chord below d, so the chord ball of radius d + SEARCH_MARGIN_M holds every point that could be
    nearer: those (rarely more than the first) are measured too, and the least distance kept.
    """
    from_xyz = ecef_m(from_lonlat)
    tree = cKDTree(ecef_m(to_lonlat))
    _, chord_nearest = tree.query(from_xyz)
    distance_m = geodesic_m(from_lonlat, to_lonlat[chord_nearest], progress=progress, desc="nearest distances")
    balls = tree.query_ball_point(from_xyz, distance_m + SEARCH_MARGIN_M)
    rows = np.repeat(np.arange(len(balls)), [len(ball) for ball in balls])
    others = np.fromiter(itertools.chain.from_iterable(balls), dtype=np.int64, count=len(rows))
    rivals = others != chord_nearest[rows]
    rows, others = rows[rivals], others[rivals]
    np.minimum.at(distance_m, rows, geodesic_m(from_lonlat[rows], to_lonlat[others], progress=progress,
                                               desc="nearest distances (near ties)"))
    return distance_m


# --- the grid -----------------------------------------------------------------------------------

def make_grid(bbox: LonLatBounds, grid_m: float) -> Grid:
    """The grid of `grid_m` ground-metre cells over the bbox (see `Grid`)."""
    area_3857 = bounds_to_3857(bbox)
    cell_3857 = grid_m * mercator_scale((bbox.south + bbox.north) / 2)
    columns = math.ceil((area_3857.east - area_3857.west) / cell_3857)
    rows = math.ceil((area_3857.north - area_3857.south) / cell_3857)
    if columns * rows > MAX_GRID_CELLS:
        raise LocgenError(f"a {grid_m:g} m grid over bbox {bbox_text(bbox)} has {columns * rows:,} cells (at most "
                          f"{MAX_GRID_CELLS:,}); give a coarser grid or a smaller area")
    return Grid(area_3857.west, area_3857.south, cell_3857, columns, rows)


def cell_counts(lonlat: np.ndarray, grid: Grid) -> np.ndarray:
    """Points per cell (points inside the bbox), as a flat array of rows * columns, row-major from the south."""
    x_3857, y_3857 = lonlat_to_3857(lonlat[:, 0], lonlat[:, 1])
    # Clipped because a point just inside the east or north edge may round onto the next cell's edge.
    col = np.clip(np.floor((x_3857 - grid.west_3857) / grid.cell_3857).astype(np.int64), 0, grid.columns - 1)
    row = np.clip(np.floor((y_3857 - grid.south_3857) / grid.cell_3857).astype(np.int64), 0, grid.rows - 1)
    return np.bincount(row * grid.columns + col, minlength=grid.rows * grid.columns)


def grid_spearman(generated_counts: np.ndarray, truth_counts: np.ndarray) -> tuple[float | None, float | None,
                                                                                     str | None]:
    """Spearman's rho of the two count vectors and its p-value, or (None, None, why) when undefined."""
    for what, counts in (("generated", generated_counts), ("real", truth_counts)):
        if counts.min() == counts.max():
            return None, None, (f"grid_spearman is null: the {what} points give every one of the {len(counts)} "
                                "cells the same count, and a rank correlation needs counts that vary")
    result = spearmanr(generated_counts, truth_counts)
    return float(result.statistic), float(result.pvalue), None


# --- scoring ------------------------------------------------------------------------------------

def score_points(generated_lonlat: np.ndarray, truth_lonlat: np.ndarray, bbox: LonLatBounds, *,
                 radii_m: tuple[float, ...] = DEFAULT_RADII_M, grid_m: float = 100.0,
                 train_lonlat: np.ndarray | None = None, memorisation_m: float = 5.0,
                 progress: bool = False) -> dict:
    """The metrics of generated points against real ones in the area ((N, 2) arrays of [lon, lat]).

    Returns {"points": counts in and out of the area, "metrics": name -> value or None, "matched":
    matched pairs per radius, "grid": the grid and its p-value, "notes": why a metric is null}.
    """
    bbox = check_bbox(bbox, "bbox")
    check_scoring(radii_m, grid_m, memorisation_m)
    generated_all, truth_all = lonlat_array(generated_lonlat), lonlat_array(truth_lonlat)
    generated, truth = generated_all[in_area(generated_all, bbox)], truth_all[in_area(truth_all, bbox)]
    if not len(truth):
        raise LocgenError(f"no real point inside bbox {bbox_text(bbox)}; give real points in the area evaluated")
    metrics, matched = matching_metrics(generated, truth, radii_m, progress=progress)
    metrics |= median_metrics(generated, truth, progress=progress)
    notes = [] if len(generated) else ["no generated point in the area: precision, both median distances, the grid "
                                       "correlation and the memorisation share are null, recall and F1 are 0"]
    grid = make_grid(bbox, grid_m)
    metrics["grid_spearman"], pvalue, why = grid_spearman(cell_counts(generated, grid), cell_counts(truth, grid))
    if why and len(generated):  # with no generated point the note above says it already
        notes.append(why)
    if train_lonlat is not None:
        train = lonlat_array(train_lonlat)
        copied, _, _ = pairs_within(generated, train, memorisation_m, progress=progress)
        metrics["memorisation_share"] = len(np.unique(copied)) / len(generated) if len(generated) else None
    points = {"generated": len(generated), "generated_outside_area": len(generated_all) - len(generated),
              "truth": len(truth), "truth_outside_area": len(truth_all) - len(truth),
              "train": None if train_lonlat is None else len(train)}
    return {"points": points, "metrics": metrics, "matched": matched,
            "grid": {**grid._asdict(), "cell_ground_m": grid_m, "spearman_pvalue": pvalue}, "notes": notes}


def matching_metrics(generated: np.ndarray, truth: np.ndarray, radii_m: tuple[float, ...], *,
                     progress: bool = False) -> tuple[dict, dict]:
    """Precision, recall and F1 at each radius (one-to-one matching), and the matched pairs per radius."""
    pair_generated, pair_truth, pair_m = pairs_within(generated, truth, max(radii_m), progress=progress)
    metrics, matched = {}, {}
    for radius_m in sorted(radii_m):
        within = pair_m <= radius_m
        matched[f"{radius_m:g}m"] = count = matched_count(pair_generated[within], pair_truth[within],
                                                          len(generated), len(truth))
        metrics[f"precision@{radius_m:g}m"] = count / len(generated) if len(generated) else None
        metrics[f"recall@{radius_m:g}m"] = count / len(truth)
        metrics[f"f1@{radius_m:g}m"] = 2 * count / (len(generated) + len(truth))
    return metrics, matched


def median_metrics(generated: np.ndarray, truth: np.ndarray, *, progress: bool = False) -> dict:
    """Median distance from each real point to the nearest generated one and back (None with no generated)."""
    if not len(generated):
        return {"median_truth_to_generated_m": None, "median_generated_to_truth_m": None}
    return {"median_truth_to_generated_m": float(np.median(nearest_m(truth, generated, progress=progress))),
            "median_generated_to_truth_m": float(np.median(nearest_m(generated, truth, progress=progress)))}


def check_scoring(radii_m: tuple[float, ...], grid_m: float, memorisation_m: float) -> None:
    """One line for a radius, grid or memorisation distance that is not a positive number of metres."""
    if not radii_m:
        raise LocgenError("no radius to score at; give one or more radii in metres (e.g. 25,50,100)")
    for what, value in [*(("radius", radius) for radius in radii_m), ("grid cell", grid_m),
                        ("memorisation distance", memorisation_m)]:
        if not (math.isfinite(value) and value > 0):
            raise LocgenError(f"{what} {value} m: give a positive number of metres")


def lonlat_array(points) -> np.ndarray:
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def in_area(lonlat: np.ndarray, bbox: LonLatBounds) -> np.ndarray:
    return contains(bbox, lonlat[:, 0], lonlat[:, 1])
