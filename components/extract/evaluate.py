"""Stage 5, evaluation: how close generated locations come to real ones, beside baselines.

What is scored, and how distances are measured: components.core.scoring.

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
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from components import __version__
from components.core.errors import LocgenError
from components.core.geo import (
    LonLatBounds,
    bbox_text,
    check_bbox,
    parse_bbox,
)
from components.core.points import read_scored_points
from components.core.provenance import OSM_ATTRIBUTION
from components.core.scoring import DEFAULT_RADII_M, check_scoring, in_area, lonlat_array, score_points
from components.core.settings import SEED, Checked, Within, setting
from components.core.storage import Store, open_file_uri
from components.core.style import STYLE_VERSION, style_sha256
from components.extract.baseline import (
    CLASS_LAYERS,
    CLASSES,
    NEAR_M,
    ROAD_LAYERS,
    class_baseline,
    fit_class_shares,
    map_margin_3857,
    roads_baseline,
    shares_problem,
    uniform_baseline,
)
from components.sources.locations import (
    LocationSource,
    feed_deadline_s_setting,
    feed_limits,
    feed_max_mb_setting,
    load_locations,
)
from components.sources.osm import MapData, header_bounds, read_osm


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
class EvaluateSettings(Checked):
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
    seed: int = setting(0, help="random seed of the baselines (%(default)s)", within=SEED)
    radii_m: tuple[float, ...] = setting(DEFAULT_RADII_M, help="the ground distances of the matches, in metres "
                                         "(%(default)s)", parse=_radii_m, metavar="M,M,...")
    grid_m: float = setting(100.0, help="ground size of the rank correlation's cells, in metres (%(default)s)")
    memorisation_m: float = setting(5.0, help="a generated point this close to a training point is memorised, in "
                                    "ground metres (%(default)s)")
    count: str | int | None = setting(None, parse=_count, metavar="N|truth",
                                      help="score only the N best-scoring generated points (their score column), or "
                                           "with 'truth' as many as the real points in the area (default: all)")
    feed_max_mb: float = feed_max_mb_setting()
    feed_deadline_s: float = feed_deadline_s_setting()
    progress: bool = setting(True, help="progress bars on stderr", cli=False, output=False)


@dataclass
class FitBaselineSettings(Checked):
    """Everything `locgen fit-baseline` takes: the training cities' real points and maps (components.core.settings)."""

    locations: list[str] = setting(help="real positions in the training cities: any location source (repeatable)",
                                   metavar="SRC")
    osm: list[str] = setting(help="the training cities' OSM files, which class the points (repeatable)", metavar="FILE")
    out: str = setting(help="the class shares, as JSON (local or s3://), for evaluate --class-shares",
                       metavar="FILE.json", output=False)
    near_m: float = setting(NEAR_M, help="a point this close to a drawn map feature has its class, in ground metres "
                            "(%(default)s)", within=Within(0, above=True))
    feed_max_mb: float = feed_max_mb_setting()
    feed_deadline_s: float = feed_deadline_s_setting()


class ClassShares(NamedTuple):
    """A class shares file, read and checked."""

    uri: str
    sha256: str
    near_m: float
    shares: dict[str, float]


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
    limits = feed_limits(settings)
    generated = load_locations(settings.generated, osm_files=osm_files, limits=limits, allow_empty=True)
    truth = [load_locations(spec, osm_files=osm_files, limits=limits) for spec in settings.truth]
    train = [load_locations(spec, osm_files=osm_files, limits=limits) for spec in settings.train_points]
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
    if not settings.locations or not settings.osm:
        raise LocgenError("fit-baseline needs --locations (the real points) and --osm (the map they are classed on)")
    osm_files = _local_osm_files(settings.osm)
    store, key = open_file_uri(settings.out)
    sources = [load_locations(spec, osm_files=osm_files, limits=feed_limits(settings)) for spec in settings.locations]
    lonlat = np.concatenate([positions_lonlat(source) for source in sources])
    extents = [header_bounds(Path(path)) for path in osm_files]
    inside = (np.ones(len(lonlat), bool) if None in extents
              else np.any([in_area(lonlat, extent) for extent in extents], axis=0))
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
    inside = in_area(lonlat, bbox)
    lonlat, scores = lonlat[inside], scores[inside]
    keep = int(in_area(truth_lonlat, bbox).sum()) if settings.count == "truth" else settings.count
    return lonlat[np.argsort(-scores, kind="stable")[:keep]]


def positions_lonlat(source: LocationSource) -> np.ndarray:
    """(N, 2) lon/lat of the points with a positive weight: what the render stage draws as markers.

    A GBFS station with no vehicle available is left out; any other weight counts as one location
    (the generator draws one marker per location, not one per vehicle).
    """
    return lonlat_array([(point.lon, point.lat) for point in source.points if point.weight > 0])


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
    if not in_area(lonlat, bbox).any():
        raise LocgenError(f"{source.uri}: none of its {len(lonlat)} located points with a positive weight lies in "
                          f"--bbox {bbox_text(bbox)}; give a --bbox that covers the real locations, or a truth source "
                          "for this area")


def _source_record(source: LocationSource, bbox: LonLatBounds) -> dict:
    """A source's provenance and how many of its points were scored."""
    lonlat = positions_lonlat(source)
    inside = int(in_area(lonlat, bbox).sum())
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
