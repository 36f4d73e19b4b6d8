"""How good the generated points are on cities a model never saw, beside the baselines.

For each held-out city: render its whole extract with the pipeline's settings, generate with the
model, extract, and score with `locgen evaluate` twice: at the model's own count of points and at the
real count (the N best-scoring points, N the real points in the area), each beside the baselines
with as many points (uniform, along roads, and the map-class baseline fitted on the training cities'
real points). The goal (issue 14): F1 within 50 m at least 1.3x the best baseline's, and grid
Spearman at least the best baseline's + 0.1. London and Munich are the held-out cities; Paris
and San Francisco (roads-only maps) are a robustness row.

Without `--model`, it first trains: the training cities' pairs rendered one tile set each, one
training run over all of them, the export. Models, thresholds and settings are chosen on the
training cities only: this script is the test, looked at once.

Needs ../shared/data (the held-out cities' extracts and station files: tests and benchmarks only); the
training cities' extracts ship in data/osm, so `--train-only` runs from a fresh clone. Prints one
JSON document; --markdown writes the tables too.

Usage: python benchmarks/bench_quality.py --model bundled            # minutes on 2 CPU cores
       python benchmarks/bench_quality.py --preset tiny --steps 3000 --cities 3 --sampling area
       python benchmarks/bench_quality.py --train-only --work out/pretrained ...   # make pretrained
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import NamedTuple

from components.core.errors import LocgenError
from components.sources.osm import header_bounds
from locgen.cli import main as locgen

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
BUNDLED_OSM = ROOT / "data" / "osm"  # the training cities' extracts ship with the project (make pretrained)
OSM_POINTS = "osm:amenity=bicycle_rental,amenity=bicycle_parking"


class City(NamedTuple):
    name: str
    osm: str  # under DATA/osm, or for a training city under BUNDLED_OSM
    truth: list[str]  # location sources (OSM tags read from `osm`, or files under DATA)
    holdout: str = ""  # a training city's box kept out of its pairs: the training cities have one


# Each training city's held-out box, where training validates its places: Helsinki's is the bundled sample's
# (pipelines.SAMPLE_HOLDOUT, 20 of its 110 real points), so a model trained here never saw the ground that
# `locgen run` scores; Prague's and Düsseldorf's are strips of about a fifth of the extract at one edge (23 of
# 79 and 10 of 50 points).
TRAINING = [City("helsinki", "helsinki-center-4km2-2019.osm.pbf", [OSM_POINTS], "24.9351,60.1641,24.9535,60.1680"),
            City("prague", "prague-north-liben-vysocany-2020.osm.pbf", [OSM_POINTS], "14.4500,50.1100,14.4660,50.1500"),
            City("duesseldorf", "duesseldorf-bilk-2021.osm.pbf", [OSM_POINTS], "6.7821,51.1967,6.8106,51.1989")]
HELD_OUT = [City("london", "london-city-2020.osm.pbf", [OSM_POINTS]),
            City("munich", "muenchen-altstadt-2020.osm.pbf", [OSM_POINTS])]
ROBUSTNESS = [City("paris", "paris-bss-roads.osm.pbf", ["positions/paris-velib-station_information-2022.json"]),
              City("san-francisco", "sf-mission-roads-2017.osm.bz2",
                   ["positions/sf-baywheels-station_information-2019-10-03.json"])]
GOAL_F1_RATIO, GOAL_SPEARMAN_MARGIN = 1.3, 0.1


def _run(*args: str) -> dict:
    """A locgen command, its JSON summary (stdout) returned; its progress and log stay on stderr."""
    out = StringIO()
    with redirect_stdout(out):
        status = locgen(list(args))
    if status:
        raise LocgenError(f"locgen {' '.join(args)} failed")
    return json.loads(out.getvalue())


def osm_path(city: City) -> Path:
    return (BUNDLED_OSM if city.holdout else DATA / "osm") / city.osm


def missing_data(cities: list[City]) -> list[str]:
    """The files of the cities (OSM extracts, station files) that are not there, by their path in
    ../shared/data (the training cities' extracts are the project's own)."""
    needed = [osm_path(city) for city in cities] + [DATA / spec for city in cities for spec in city.truth
                                                     if not spec.startswith("osm:")]
    return [str(path.relative_to(DATA)) if path.is_relative_to(DATA) else str(path) for path in needed
            if not path.is_file()]


def _truth(city: City) -> list[str]:
    return [spec if spec.startswith("osm:") else str(DATA / spec) for spec in city.truth]


def train(work: Path, cities: list[City], args) -> str:
    """Render each training city's pairs, train one model on all of them, export it; the ONNX path."""
    data = []
    for city in cities:
        out = work / "train" / city.name
        _run("render", "--osm", str(osm_path(city)), "--city", city.name, "--out", str(out),
             "--pairs", str(args.pairs), "--sampling", args.sampling, "--marker-radius-px", "5",
             "--holdout", city.holdout, "--seed", "0", "--workers", "0",
             *[option for spec in _truth(city) for option in ("--locations", spec)])
        data += ["--data", str(out)]
    _run("train", *data, "--out", str(work / "model"), "--preset", args.preset, "--resume-if-any",
         *(["--steps", str(args.steps)] if args.steps else []),
         *(["--init-from", args.init_from] if args.init_from else []),
         *(option for setting in args.set for option in ("--set", setting)))
    _run("export", "--checkpoint", str(work / "model" / "generator.pt"), "--out", str(work / "model.onnx"))
    return str(work / "model.onnx")


def chosen_validation(work: Path) -> dict:
    """The validation of the checkpoint training chose (on the training cities' held-out boxes)."""
    from components.train.generator_file import load_generator

    return load_generator(str(work / "model" / "generator.pt"))[1]["validation"]


def fit_shares(work: Path) -> str:
    """The map-class shares of the real points of every training city: the fitted baseline's."""
    out = work / "class-shares.json"
    _run("fit-baseline", *[option for city in TRAINING for spec in _truth(city) for option in ("--locations", spec)],
         *[option for city in TRAINING for option in ("--osm", str(osm_path(city)))], "--out", str(out))
    return str(out)


def score_city(work: Path, city: City, model: str | None, shares: str) -> dict:
    """Render, generate, extract and evaluate one held-out city, at the model's and at the real count."""
    osm = str(osm_path(city))
    box = header_bounds(Path(osm))
    bbox = ",".join(f"{value:.7f}" for value in box)
    plain, generated, points = (work / city.name / name for name in ("plain", "generated", "points.csv"))
    # --bbox=...: a west longitude below 0 would otherwise read as an option
    _run("render", "--osm", osm, "--city", city.name, "--out", str(plain), f"--bbox={bbox}", "--workers", "0")
    _run("generate", "--tiles", str(plain), "--out", str(generated), *(["--model", model] if model else []))
    extracted = _run("extract", "--tiles", str(generated), "--out", str(points))
    truth = [option for spec in _truth(city) for option in ("--truth", spec)]
    result = {"city": city.name, "bbox": bbox, "points": extracted["points"],
              "rejected_blobs": extracted["rejected_blobs"]}
    for label, count in (("model_count", []), ("real_count", ["--count", "truth"])):
        report_path = work / city.name / f"report-{label}.json"
        _run("evaluate", "--generated", str(points), *truth, f"--bbox={bbox}", "--osm", osm, "--class-shares",
             shares, "--out", str(report_path), *count)
        result[label] = _summary(json.loads(report_path.read_text()))
    return result


def _summary(report: dict) -> dict:
    """The figures the goal is about, for the model and each baseline, and whether the goal is met."""
    def pick(scores: dict) -> dict:
        metrics = scores["metrics"]
        return {"f1@50m": metrics["f1@50m"], "spearman": metrics["grid_spearman"]}

    baselines = {name: pick(scores) for name, scores in report["baselines"].items()}
    model = pick(report["model"])
    best_f1 = max((b["f1@50m"] for b in baselines.values() if b["f1@50m"] is not None), default=None)
    best_rho = max((b["spearman"] for b in baselines.values() if b["spearman"] is not None), default=None)
    return {"generated": report["model"]["points"]["generated"], "real": report["model"]["points"]["truth"],
            "model": model, "baselines": baselines,
            "f1_ratio_to_best_baseline": None if not best_f1 or model["f1@50m"] is None
            else round(model["f1@50m"] / best_f1, 3),
            "spearman_over_best_baseline": None if best_rho is None or model["spearman"] is None
            else round(model["spearman"] - best_rho, 3),
            "goal_met": bool(best_f1 and model["f1@50m"] is not None and model["spearman"] is not None
                             and best_rho is not None and model["f1@50m"] >= GOAL_F1_RATIO * best_f1
                             and model["spearman"] >= best_rho + GOAL_SPEARMAN_MARGIN),
            "verdict": report["verdict"]["line"]}


def markdown(document: dict) -> str:
    lines = [f"Model: {document['model']}. Goal: F1@50m >= {GOAL_F1_RATIO}x the best baseline, Spearman >= best "
             f"+ {GOAL_SPEARMAN_MARGIN}.", ""]
    for city in document["cities"]:
        for label in ("model_count", "real_count"):
            figures = city[label]
            names = list(figures["baselines"])
            lines += [f"**{city['city']}**, {label.replace('_', ' ')} ({figures['generated']} generated, "
                      f"{figures['real']} real)", "", "| | model | " + " | ".join(names) + " |",
                      "|---|---|" + "---|" * len(names)]
            for metric in ("f1@50m", "spearman"):
                cells = [figures["model"][metric]] + [figures["baselines"][name][metric] for name in names]
                lines.append(f"| {metric} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
            lines += ["", f"Goal met: {'yes' if figures['goal_met'] else 'no'}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an exported MODEL.onnx, or 'bundled'; without it, train first")
    parser.add_argument("--cities", type=int, default=len(TRAINING), help="training cities, in order (3)")
    parser.add_argument("--pairs", type=int, default=400, help="training pairs per city (400)")
    parser.add_argument("--sampling", default="area", choices=("points", "area"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--init-from", help="fine-tune this generator (locgen train --init-from), e.g. bundled")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a training setting for locgen train --set (repeatable)")
    parser.add_argument("--robustness", action="store_true", help="also the roads-only maps (Paris, San Francisco)")
    parser.add_argument("--work", type=Path, help="keep the tiles, model and reports here (default: a temporary "
                                                  "folder)")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown")
    parser.add_argument("--train-only", action="store_true",
                        help="train and export into --work, score nothing (make pretrained: the bundled data only)")
    args = parser.parse_args()
    if args.train_only:
        if args.model or not args.work:
            parser.error("--train-only trains into --work: give --work DIR, and no --model")
        print(json.dumps({"model": train(args.work, TRAINING[:args.cities], args),
                          "validation": chosen_validation(args.work)}, indent=2))
        return 0
    missing = missing_data(TRAINING + HELD_OUT + ROBUSTNESS)
    if missing:
        print(f"bench_quality: error: {DATA} lacks {', '.join(missing)}; the benchmark needs ../shared/data "
              "(see its README)", file=sys.stderr)
        return 2
    started_s = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        model = None if args.model == "bundled" else args.model or train(work, TRAINING[:args.cities], args)
        shares = fit_shares(work)
        cities = [score_city(work, city, model, shares) for city in HELD_OUT + (ROBUSTNESS if args.robustness else [])]
        validation = None if args.model else chosen_validation(work)
    trained = (f"{args.preset} trained on {', '.join(city.name for city in TRAINING[:args.cities])}"
               + (f" from {args.init_from}" if args.init_from else ""))
    document = {"benchmark": "quality", "model": args.model or f"{trained} ({args.sampling} sampling)",
                "machine": f"{platform.machine()}, {platform.system()}",
                "wall_s": round(time.perf_counter() - started_s), "validation": validation, "cities": cities}
    print(json.dumps(document, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
