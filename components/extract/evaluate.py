"""Stage 5, evaluation: how close generated locations come to real ones, beside baselines.

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

Baselines get the same metrics with as many points as the model has in the area, drawn with the seed
(components.extract.baseline):
- `uniform`: uniform in ground area (not in degrees);
- `roads` (when OSM data is given): uniform by length along the roads and paths of the map style;
- `fitted` (with class shares, which `fit_baseline` measures on training cities): a map class per point
  by the shares (major road, minor road, path, building outline, other line, open land, water, none),
  then a place of that class in the area.
A metric beats a baseline when it is strictly better (higher, or lower for distances); the
memorisation share is reported for the baselines as its chance level, not compared.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from geopy.distance import ELLIPSOIDS, geodesic
from scipy.spatial import cKDTree
from scipy.stats import spearmanr
from tqdm import tqdm

from components import __version__
from components.core.errors import LocgenError
from components.core.geo import (
    LonLatBounds,
    bounds_to_3857,
    check_bbox,
    contains,
    lonlat_to_3857,
    mercator_scale,
    parse_bbox,
)
from components.core.matching import matched_count
from components.core.points import read_scored_points
from components.core.provenance import OSM_ATTRIBUTION
from components.core.settings import setting
from components.core.storage import Store, open_file_uri
from components.core.style import STYLE_VERSION, style_sha256
from components.extract.baseline import (
    CLASS_LAYERS,
    CLASSES,
    NEAR_M,
    ROAD_LAYERS,
    bbox_text,
    class_baseline,
    fit_class_shares,
    map_margin_3857,
    roads_baseline,
    shares_problem,
    uniform_baseline,
)
from components.sources.locations import LocationSource, load_locations
from components.sources.osm import MapData, header_bounds, read_osm

DEFAULT_RADII_M = (25.0, 50.0, 100.0)
_A_KM, _, _FLATTENING = ELLIPSOIDS["WGS-84"]  # geopy's WGS84, so the chords and the geodesics share one ellipsoid
WGS84_A_M = _A_KM * 1000.0
WGS84_E2 = _FLATTENING * (2.0 - _FLATTENING)
SEARCH_MARGIN_M = 1e-3  # added to chord search radii: absorbs float rounding (see the module docstring)
MAX_GRID_CELLS = 10_000_000  # two count vectors of this size take 160 MB: a finer grid is a mistake
# One geopy calculator for every pair: a new geodesic() per pair rebuilds geographiclib's series
# coefficients each time, which is 40 % of the cost of a distance.
_GEODESIC = geodesic()


def _count(text: str, what: str) -> str | int:
    """'truth', or a number of points above 0."""
    if text == "truth":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise LocgenError(f"{what} {text}: give a number of points above 0, or 'truth' (as many as the real points)")
    return count


def _radii_m(text: str, what: str) -> tuple[float, ...]:
    try:
        radii_m = tuple(float(value) for value in text.split(","))
    except ValueError:
        radii_m = ()
    if not radii_m or min(radii_m) <= 0:
        raise LocgenError(f"{what} {text}: give ground distances above 0 in metres, e.g. 25,50,100")
    return radii_m


@dataclass
class EvaluateSettings:
    """Everything `locgen evaluate` takes, with its defaults and help, in one place (components.core.settings)."""

    generated: str = setting(help="the points to score (CSV or GeoJSON)", metavar="FILE")
    truth: list[str] = setting(help="real positions: any location source (repeatable)", metavar="SRC")
    bbox: LonLatBounds = setting(help="the area scored", parse=parse_bbox, metavar="W,S,E,N")  # lon/lat
    out: str = setting(help="report (the Markdown goes beside it)", metavar="FILE.json", output=False)
    osm: list[str] = setting(help="OSM file for the roads baseline and osm: sources (repeatable)", metavar="FILE",
                             default_factory=list)
    train_points: list[str] = setting(help="training locations, for the memorisation share (repeatable)",
                                      metavar="SRC", default_factory=list)
    class_shares: str | None = setting(None, help="map class shares fitted on training cities (locgen fit-baseline; "
                                       "local or s3://): a third baseline, fitted, placed by them on the --osm map",
                                       metavar="FILE.json")
    seed: int = setting(0, help="random seed of the baselines (%(default)s)")
    radii_m: tuple[float, ...] = setting(DEFAULT_RADII_M, help="the ground distances of the matches, in metres "
                                         "(%(default)s)", parse=_radii_m, metavar="M,M,...")
    grid_m: float = setting(100.0, help="ground size of the rank correlation's cells, in metres (%(default)s)")
    memorisation_m: float = setting(5.0, help="a generated point this close to a training point is memorised, in "
                                    "ground metres (%(default)s)")
    count: str | int | None = setting(None, parse=_count, metavar="N|truth",
                                      help="score only the N best-scoring generated points (their score column), or "
                                           "with 'truth' as many as the real points in the area (default: all)")
    progress: bool = setting(True, help="progress bars on stderr", cli=False, output=False)


@dataclass
class FitBaselineSettings:
    """Everything `locgen fit-baseline` takes: the training cities' real points and maps (components.core.settings)."""

    locations: list[str] = setting(help="real positions in the training cities: any location source (repeatable)",
                                   metavar="SRC")
    osm: list[str] = setting(help="the training cities' OSM files, which class the points (repeatable)", metavar="FILE")
    out: str = setting(help="the class shares, as JSON (local or s3://), for evaluate --class-shares",
                       metavar="FILE.json", output=False)
    near_m: float = setting(NEAR_M, help="a point this close to a drawn map feature has its class, in ground metres "
                            "(%(default)s)")


class ClassShares(NamedTuple):
    """A class shares file, read and checked."""

    uri: str
    sha256: str
    near_m: float
    shares: dict[str, float]


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
    generated_all, truth_all = _lonlat_array(generated_lonlat), _lonlat_array(truth_lonlat)
    generated, truth = generated_all[_in_area(generated_all, bbox)], truth_all[_in_area(truth_all, bbox)]
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
        train = _lonlat_array(train_lonlat)
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


def _lonlat_array(points) -> np.ndarray:
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def _in_area(lonlat: np.ndarray, bbox: LonLatBounds) -> np.ndarray:
    return contains(bbox, lonlat[:, 0], lonlat[:, 1])


# --- the evaluation stage -----------------------------------------------------------------------

def evaluate(settings: EvaluateSettings) -> dict:
    """Score the generated points and the baselines; write report.json and report.md; return the report."""
    check_bbox(settings.bbox, "--bbox")
    check_scoring(settings.radii_m, settings.grid_m, settings.memorisation_m)
    store, json_key, markdown_key = _report_keys(settings.out)
    if not settings.truth:
        raise LocgenError("no truth source; give the real locations (a GBFS feed, CSV, GeoJSON or osm:KEY=VALUE)")
    osm_files = _local_osm_files(settings.osm)
    class_shares = read_class_shares(settings.class_shares) if settings.class_shares else None
    if class_shares is not None and not osm_files:
        raise LocgenError(f"--class-shares {settings.class_shares}: the fitted baseline places its points on the map "
                          "of the area; give --osm data of the area too")
    bbox = scored_area(settings.bbox, osm_files)
    # A model that found nothing is scored as such, not refused.
    generated = load_locations(settings.generated, osm_files=osm_files, allow_empty=True)
    truth = [load_locations(spec, osm_files=osm_files) for spec in settings.truth]
    train = [load_locations(spec, osm_files=osm_files) for spec in settings.train_points]
    for source in truth:
        _require_points_in_area(source, bbox)
    train_lonlat = np.concatenate([positions_lonlat(source) for source in train]) if train else None
    truth_lonlat = np.concatenate([positions_lonlat(source) for source in truth])

    def score(points_lonlat: np.ndarray) -> dict:
        return score_points(points_lonlat, truth_lonlat, bbox, radii_m=settings.radii_m, grid_m=settings.grid_m,
                            train_lonlat=train_lonlat, memorisation_m=settings.memorisation_m,
                            progress=settings.progress)

    model = score(_chosen(settings, generated, truth_lonlat, bbox))
    count = model["points"]["generated"]
    baselines = {"uniform": score(uniform_baseline(count, bbox, settings.seed))}
    # Features just outside the area decide the class of places near its edge (the roads baseline cuts to the bbox).
    margin_3857 = map_margin_3857(bbox, class_shares.near_m) if class_shares else 0.0
    map_data = read_osm([Path(path) for path in osm_files], bbox, margin_3857=margin_3857) if osm_files else None
    if map_data is not None:
        baselines["roads"] = score(roads_baseline(count, bbox, map_data, settings.seed))
    if class_shares is not None:
        baselines["fitted"] = score(class_baseline(count, bbox, map_data, class_shares.shares, settings.seed,
                                                   class_shares.near_m))
    report = _report(settings, bbox, generated, truth, train, map_data, class_shares, model, baselines)
    # The Markdown first: a report.json in place means the whole report is.
    store.publish_bytes(markdown_key, markdown_report(report).encode("utf-8"), "text/markdown")
    store.publish_bytes(json_key, json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8"),
                        "application/json")
    return report


def read_class_shares(uri: str) -> ClassShares:
    """The class shares file at `uri` (local or s3://), checked: one clear error naming the file and the fix."""
    store, key = open_file_uri(uri)
    raw = store.get_bytes(key)
    try:
        document = json.loads(raw)
    except ValueError as error:  # not UTF-8 text, or not JSON
        document, problem = None, f"not JSON ({error})"
    else:
        problem = (shares_problem(document.get("shares")) if isinstance(document, dict)
                   else "not a JSON object with the shares")
    near_m = document.get("near_m", NEAR_M) if isinstance(document, dict) else NEAR_M
    if problem is None and (isinstance(near_m, bool) or not isinstance(near_m, (int, float))
                            or not (math.isfinite(near_m) and near_m > 0)):
        problem = f"near_m {near_m!r} is not a positive number of ground metres"
    if problem:
        raise LocgenError(f"--class-shares {uri}: {problem}; write it with locgen fit-baseline --locations SRC --osm "
                          f"FILE --out {uri}")
    shares = {name: float(document["shares"].get(name, 0.0)) for name in CLASSES}
    return ClassShares(uri, hashlib.sha256(raw).hexdigest(), float(near_m), shares)


def fit_baseline(settings: FitBaselineSettings) -> dict:
    """Fit the class shares on the training cities' real points and maps; write them as JSON; return a summary.

    The points of every source are pooled; those outside the extent the OSM files state are left out
    (nothing is known of the map there).
    """
    if not (math.isfinite(settings.near_m) and settings.near_m > 0):
        raise LocgenError(f"--near-m {settings.near_m}: give a positive number of ground metres")
    if not settings.locations or not settings.osm:
        raise LocgenError("fit-baseline needs --locations (the real points) and --osm (the map they are classed on)")
    osm_files = _local_osm_files(settings.osm)
    store, key = open_file_uri(settings.out)
    sources = [load_locations(spec, osm_files=osm_files) for spec in settings.locations]
    lonlat = np.concatenate([positions_lonlat(source) for source in sources])
    extents = [header_bounds(Path(path)) for path in osm_files]
    inside = (np.ones(len(lonlat), bool) if None in extents
              else np.any([_in_area(lonlat, extent) for extent in extents], axis=0))
    if not inside.any():
        raise LocgenError(f"none of the {len(lonlat)} located points of --locations lies inside the extent of the "
                          "--osm data; give the OSM files of the cities the locations are in")
    points = lonlat[inside]
    area = LonLatBounds(*points.min(axis=0), *points.max(axis=0))
    map_data = read_osm([Path(path) for path in osm_files], area, margin_3857=map_margin_3857(area, settings.near_m))
    shares = fit_class_shares(points, map_data, settings.near_m)
    document = {"kind": "locgen class shares", "locgen_version": __version__, "style_version": STYLE_VERSION,
                "style_sha256": style_sha256(), "near_m": settings.near_m,
                "classes": {name: list(layers) for name, layers in CLASS_LAYERS.items()}, "shares": shares,
                "points": {name: round(share * len(points)) for name, share in shares.items()},
                "points_fitted": len(points), "points_outside_osm": int((~inside).sum()),
                "locations": [{"uri": source.uri, "kind": source.kind, "sha256": source.sha256,
                               "points": len(source.points)} for source in sources],
                "osm": [source._asdict() for source in map_data.sources], "attribution": OSM_ATTRIBUTION}
    store.publish_bytes(key, json.dumps(document, indent=2, allow_nan=False).encode("utf-8"), "application/json")
    return {"out": settings.out, "points": len(points), "shares": shares}


def scored_area(bbox: LonLatBounds, osm_files: list[str]) -> LonLatBounds:
    """The bbox, less what lies outside the extent the OSM files state (nothing is known there: a
    generator makes no point there, and real points there are no test of it)."""
    extents = [header_bounds(Path(path)) for path in osm_files]
    if not extents or None in extents:
        return bbox
    west, south = max(bbox.west, min(e.west for e in extents)), max(bbox.south, min(e.south for e in extents))
    east, north = min(bbox.east, max(e.east for e in extents)), min(bbox.north, max(e.north for e in extents))
    if west >= east or south >= north:
        raise LocgenError(f"--bbox {bbox_text(bbox)} lies outside the extent of the --osm data; give a bbox the "
                          "data covers")
    return LonLatBounds(west, south, east, north)


def _chosen(settings: EvaluateSettings, generated: LocationSource, truth_lonlat: np.ndarray,
            bbox: LonLatBounds) -> np.ndarray:
    """The generated points to score: all, or with a count the best-scoring ones in the area."""
    if settings.count is None:
        return positions_lonlat(generated)
    lonlat, scores = read_scored_points(settings.generated)
    inside = _in_area(lonlat, bbox)
    lonlat, scores = lonlat[inside], scores[inside]
    keep = int(_in_area(truth_lonlat, bbox).sum()) if settings.count == "truth" else settings.count
    return lonlat[np.argsort(-scores, kind="stable")[:keep]]


def positions_lonlat(source: LocationSource) -> np.ndarray:
    """(N, 2) lon/lat of the points with a positive weight: what the render stage draws as markers.

    A GBFS station with no vehicle available is left out; any other weight counts as one location
    (the generator draws one marker per location, not one per vehicle).
    """
    return _lonlat_array([(point.lon, point.lat) for point in source.points if point.weight > 0])


def _report_keys(out: str) -> tuple[Store, str, str]:
    """The store of the reports, the JSON report's key and the Markdown's: its name with the suffix .md."""
    store, json_key = open_file_uri(out)
    markdown_key = str(PurePosixPath(json_key).with_suffix(".md"))
    if markdown_key == json_key:
        raise LocgenError(f"--out {out}: the Markdown report would overwrite it; give the JSON report's name, "
                          "e.g. report.json (report.md is written beside it)")
    return store, json_key, markdown_key


def _local_osm_files(specs: list[str]) -> list[str]:
    """The --osm files, which must be local: evaluation reads no s3:// object or Overpass itself."""
    for spec in specs:
        if not Path(spec).is_file():
            raise LocgenError(f"--osm {spec}: no such local file; evaluate reads local .osm.pbf/.osm/.osm.bz2 "
                              "files only (copy an s3:// object or an Overpass answer to a local file first)")
    return list(specs)


def _require_points_in_area(source: LocationSource, bbox: LonLatBounds) -> None:
    """A truth source must place something in the area: else the bbox or the source is wrong."""
    lonlat = positions_lonlat(source)
    if not _in_area(lonlat, bbox).any():
        raise LocgenError(f"{source.uri}: none of its {len(lonlat)} located points with a positive weight lies in "
                          f"--bbox {bbox_text(bbox)}; give a --bbox that covers the real locations, or a truth source "
                          "for this area")


def _source_record(source: LocationSource, bbox: LonLatBounds) -> dict:
    """A source's provenance and how many of its points were scored."""
    lonlat = positions_lonlat(source)
    inside = int(_in_area(lonlat, bbox).sum())
    return {"uri": source.uri, "kind": source.kind, "sha256": source.sha256, "points": len(source.points),
            "weight_zero": len(source.points) - len(lonlat), "in_area": inside, "outside_area": len(lonlat) - inside}


METHOD = {
    "area": "points outside the bbox (west/south inclusive, east/north exclusive) are dropped before scoring; "
            "training points are kept wherever they are",
    "points": "every located point with a positive weight counts once (what the render stage draws as a marker): "
              "GBFS stations with no vehicle available are left out; the real points of all truth sources are "
              "pooled",
    "distances": "geodesic on the WGS84 ellipsoid (geopy); candidate pairs come from a KD-tree on earth-centred "
                 "coordinates, whose chord never exceeds the geodesic, so no pair within a radius is missed",
    "matching": "at radius r, generated and real points are matched one to one, pairs at most r apart, by "
                "maximum-cardinality bipartite matching; precision = matched / generated, recall = matched / "
                "real, F1 = 2 matched / (generated + real)",
    "medians": "median geodesic distance from each real point to the nearest generated point, and back",
    "grid_spearman": "Spearman's rho of the point counts per cell, over every cell (empty ones included) of a grid "
                     "of grid_m ground metres at mid-latitude (EPSG:3857 squares of grid_m * sec(mid-latitude)) "
                     "from the bbox's south-west corner; null when either count is the same in every cell",
    "memorisation": "share of generated points within memorisation_m of a training point; for the baselines "
                    "it is the chance level, not a score",
    "empty": "with no generated point in the area, precision, both median distances, the grid correlation and "
             "the memorisation share are null (nothing to measure) and recall and F1 are 0",
    "uniform_baseline": "as many points as the model has in the area, uniform in ground area (uniform longitude "
                        "and sine of latitude), drawn with the seed",
    "roads_baseline": f"as many points, uniform by ground length along the lines of the style layers "
                      f"{', '.join(ROAD_LAYERS)} cut to the bbox, drawn with the seed",
    "fitted_baseline": "with class shares (fitted on training cities' real points by locgen fit-baseline): as many "
                       "points, each given a map class by the shares, then a place of that class in the bbox, by "
                       "ground length along its lines (roads, paths, building outlines, other lines) or by ground "
                       "area (open land, water, none); a place has the class of the nearest drawn feature within "
                       "near_m ground metres (ties to the class listed first), else of the topmost area it lies in, "
                       "else none; classes with no place in the bbox are left out and the other shares scaled up; "
                       "drawn with the seed",
    "verdict": "the model beats a baseline on a metric when it is strictly better (higher; lower for the "
               "median distances); memorisation is not compared",
}


def _report(settings: EvaluateSettings, bbox: LonLatBounds, generated: LocationSource, truth: list[LocationSource],
            train: list[LocationSource], map_data: MapData | None, class_shares: ClassShares | None, model: dict,
            baselines: dict[str, dict]) -> dict:
    """The report document: inputs with their hashes, the method, the scores and the verdicts."""
    inputs = {"generated": _source_record(generated, bbox), "truth": [_source_record(s, bbox) for s in truth],
              "train_points": [_source_record(s, bbox) for s in train],
              "osm": [source._asdict() for source in map_data.sources] if map_data else [],
              "class_shares": class_shares._asdict() if class_shares else None,
              "bbox": list(settings.bbox), "area": list(bbox), "count": settings.count, "seed": settings.seed,
              "radii_m": list(settings.radii_m),
              "grid_m": settings.grid_m, "memorisation_m": settings.memorisation_m}
    verdicts = compare(model["metrics"], {name: score["metrics"] for name, score in baselines.items()})
    report = {"locgen_version": __version__, "inputs": inputs, "method": METHOD, "model": model,
              "baselines": baselines, "verdicts": verdicts, "verdict": overall_verdict(verdicts, list(baselines))}
    if settings.osm:
        report["attribution"] = OSM_ATTRIBUTION  # ODbL: the roads baseline and osm: sources come from OSM
    return report


# --- verdicts and the Markdown ------------------------------------------------------------------

def better_direction(metric: str) -> int | None:
    """+1 when a higher value is better, -1 when lower is, None for a metric that is not a score."""
    if metric == "memorisation_share":
        return None
    return -1 if metric.startswith("median_") else 1


def compare(model: dict, baselines: dict[str, dict]) -> dict:
    """Per compared metric: whether the model beats each baseline, and whether it beats them all.

    A comparison with a null value on either side is null; `beats_baselines` is false as soon as one
    baseline is not beaten, null when none is lost but one is unknown.
    """
    verdicts = {}
    for metric, value in model.items():
        direction = better_direction(metric)
        if direction is None:
            continue
        beats = {name: _beats(value, metrics[metric], direction) for name, metrics in baselines.items()}
        outcomes = set(beats.values())
        beats["beats_baselines"] = False if False in outcomes else (None if None in outcomes else True)
        verdicts[metric] = beats
    return verdicts


def _beats(value: float | None, baseline: float | None, direction: int) -> bool | None:
    """Whether `value` is strictly better than `baseline` in `direction`; None when either is null."""
    if value is None or baseline is None:
        return None
    return direction * value > direction * baseline


def overall_verdict(verdicts: dict, baselines: list[str]) -> dict:
    """How many metrics the model wins against every baseline, with a sentence for the reader."""
    wins = sum(verdict["beats_baselines"] is True for verdict in verdicts.values())
    against = "the baseline" if len(baselines) == 1 else "every baseline"
    return {"metrics_compared": len(verdicts), "metrics_beating_baselines": wins,
            "beats_baselines": wins == len(verdicts),
            "line": f"the model beats {against} ({', '.join(baselines)}) on {wins} of {len(verdicts)} metrics"}


def markdown_report(report: dict) -> str:
    """A short Markdown page for the Kubeflow UI: the inputs, a table model vs baselines, the verdict."""
    inputs, baselines = report["inputs"], list(report["baselines"])
    points = report["model"]["points"]
    sources = ", ".join(f"`{source['uri']}`" for source in inputs["truth"])
    training = ", ".join(f"`{source['uri']}`" for source in inputs["train_points"]) or "none given"
    lines = ["# Evaluation of generated locations", "",
             f"Area: bbox {bbox_text(LonLatBounds(*inputs['area']))} (lon/lat){_clipped(inputs)}. Points outside "
             "it are dropped: "
             f"{points['generated']} generated points scored ({points['generated_outside_area']} outside), "
             f"{points['truth']} real ({points['truth_outside_area']} outside).", "",
             f"Generated: `{inputs['generated']['uri']}`. Real: {sources}. Training points: {training}.", "",
             "| metric | model | " + " | ".join(baselines) + " | beats baselines |",
             "|---|---:|" + "---:|" * len(baselines) + "---|"]
    for metric, value in report["model"]["metrics"].items():
        verdict = report["verdicts"].get(metric)
        beats = "not compared (chance level)" if verdict is None else _yes_no(verdict["beats_baselines"])
        cells = [_format(metric, value)] + [_format(metric, report["baselines"][name]["metrics"][metric])
                                            for name in baselines]
        lines.append(f"| {_metric_label(metric)} | " + " | ".join(cells) + f" | {beats} |")
    lines += ["", f"**Verdict:** {report['verdict']['line']}.", ""]
    notes = report["model"]["notes"]
    lines += [f"Note: {note}." for note in notes] + ([""] if notes else [])
    lines.append("Distances are geodesic (WGS84); matching is one to one (maximum bipartite matching); seed "
                 f"{inputs['seed']}; locgen {report['locgen_version']}.")
    if "attribution" in report:
        lines += ["", f"Map data {report['attribution']} (https://www.openstreetmap.org/copyright)."]
    return "\n".join(lines) + "\n"


def _clipped(inputs: dict) -> str:
    """What the scored area and count were made of, when not simply the bbox and every point."""
    notes = []
    if inputs["area"] != inputs["bbox"]:
        notes.append(f"the part of {bbox_text(LonLatBounds(*inputs['bbox']))} inside the OSM data's extent")
    if inputs.get("count") is not None:
        count = "as many as the real ones" if inputs["count"] == "truth" else inputs["count"]
        notes.append(f"the best-scoring generated points, {count}")
    return f", {'; '.join(notes)}" if notes else ""


def _metric_label(metric: str) -> str:
    """'precision@25m' -> 'precision within 25 m'; the other names in words."""
    name, at, radius = metric.partition("@")
    if at:
        return f"{'F1' if name == 'f1' else name} within {radius.removesuffix('m')} m"
    return {"median_truth_to_generated_m": "median distance real → nearest generated (m)",
            "median_generated_to_truth_m": "median distance generated → nearest real (m)",
            "grid_spearman": "rank correlation of grid counts (Spearman)",
            "memorisation_share": "share within the memorisation distance of a training point"}[metric]


def _format(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if metric.endswith("_m") else f"{value:.3f}"


def _yes_no(beats: bool | None) -> str:
    return {True: "yes", False: "no", None: "n/a"}[beats]
