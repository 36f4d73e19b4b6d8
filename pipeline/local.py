"""Compile the pipelines to YAML, and run them on this machine through kfp.local.

`kfp.local.SubprocessRunner(use_venv=False)` runs each lightweight component in a subprocess of this
Python, with the project installed: the same pipeline, components and code as on a cluster, without
containers. Parameters are checked here, before any stage runs.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path

import yaml
from kfp import compiler, local

from components.core.errors import LocgenError, one_line
from components.core.settings import Declared, declared, parse_text
from components.extract.evaluate import EvaluateSettings
from components.extract.job import ExtractSettings
from components.infer.settings import GenerateSettings
from components.render.job import RenderSettings
from components.train.config import PRESETS
from pipeline.images import DEFAULT_REGISTRY
from pipeline.pipelines import SAMPLE_CITY, SAMPLE_MODEL, SAMPLE_TARGET_OSM, TASKS, build_pipelines
from pipeline.runlog import RunLog
from pipeline.steps import CITY_EXAMPLE, asked_gpus, city_parameters, city_prefix

PIPELINE_DIR = Path(__file__).resolve().parent
# A parameter feeds the stage setting of its name, or of its name less one of these: target_ (the end-to-end
# pipeline's target town), truth_ (the area scored), train_ and infer_ (what a batch size sizes).
PARAMETER_PREFIXES = ("target_", "truth_", "train_", "infer_")
STAGE_SETTINGS = (RenderSettings, EvaluateSettings, GenerateSettings, ExtractSettings)  # what parameters feed
TYPE_NAMES = {int: "a whole number", float: "a number", str: "a text", list: "a JSON list", bool: "true or false"}
PROJECT_ROOT = PIPELINE_DIR.parent

log = logging.getLogger(__name__)


def pipeline_file(name: str) -> Path:
    return PIPELINE_DIR / f"{name}.yaml"


def compile_all(out_dir: Path = PIPELINE_DIR, registry: str = DEFAULT_REGISTRY, gpus: bool = True,
                **cluster) -> list[Path]:
    """Write every pipeline's YAML into out_dir: the images come from `registry`; without `gpus`, no
    task asks for a GPU (a cluster without any: train and infer run on the CPU); `cluster`: the other
    settings of `build_pipelines` (GPU node selector, parallelism)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in build_pipelines(registry, gpus, **cluster).items():
        path = Path(out_dir) / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        _sort_header(path)
        written.append(path)
    return written


def _sort_header(path: Path) -> None:
    """kfp writes the YAML's body with sorted keys but its header comment (the inputs and their defaults)
    in the order protobuf gives a Struct's keys, which changes from one process to the next for a dict
    default (the `cities` items): the same header, from the written body, so that compiling is repeatable."""
    from kfp.compiler.pipeline_spec_builder import extract_comments_from_pipeline_spec

    lines = path.read_text().splitlines(keepends=True)
    start = next(index for index, line in enumerate(lines) if not line.startswith("#"))
    header, body = lines[:start], lines[start:]
    fresh = extract_comments_from_pipeline_spec(next(yaml.safe_load_all("".join(body))), None).splitlines(True)
    inputs = next((index for index, line in enumerate(header) if line.startswith("# Inputs:")), len(header))
    fresh_inputs = next((index for index, line in enumerate(fresh) if line.startswith("# Inputs:")), len(fresh))
    path.write_text("".join(header[:inputs] + fresh[fresh_inputs:] + body))


def parse_parameters(texts: list[str]) -> dict:
    """NAME=VALUE texts as parameters: VALUE as JSON when it parses (numbers, lists), else as a string."""
    parameters = {}
    for text in texts:
        name, _, raw = text.partition("=")
        if not name or not raw:
            raise LocgenError(f"--param {text}: give NAME=VALUE, e.g. steps=500")
        try:
            parameters[name] = json.loads(raw)
        except json.JSONDecodeError:
            parameters[name] = raw
    return parameters


def pipeline_defaults(pipeline) -> dict:
    """A pipeline's parameters with their defaults, by name."""
    return {name: value.default for name, value in inspect.signature(pipeline.pipeline_func).parameters.items()}


def check_parameters(pipeline, given: dict, local_files: bool = True) -> dict:
    """One clear error for a parameter no stage could run with, before any stage runs (`local_files`:
    OSM paths that are not s3:// must exist here); returns `given` with a whole number given to a text
    parameter as its text (`--param train_gpus=2` reads as JSON)."""
    defaults = pipeline_defaults(pipeline)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise LocgenError(f"unknown parameters {unknown} for {pipeline.name}; it takes {', '.join(defaults)}")
    given = {name: str(value) if isinstance(defaults[name], str) and type(value) is int else value
             for name, value in given.items()}
    if "cities" in defaults:
        check_cities(given.get("cities", defaults["cities"]), local_files,
                     held_out="holdout_points" in (pipeline.component_spec.outputs or {}))
    for name, value in given.items():
        if name == "cities":
            continue
        expected = type(defaults[name])
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            if not (expected is float and isinstance(value, int)):
                raise LocgenError(f"parameter {name}={json.dumps(value)}: give {TYPE_NAMES[expected]}, like "
                                  f"{json.dumps(defaults[name])}")
    parameters = {**defaults, **given}
    if "train_gpus" in parameters:
        asked_gpus(parameters["train_gpus"], "train_gpus")
    preset = parameters.get("preset")
    if preset is not None and preset not in PRESETS:
        raise LocgenError(f"preset {preset!r}: unknown; give one of {', '.join(sorted(PRESETS))}")
    for name, value in parameters.items():
        item = setting_fed_by(name)
        if isinstance(value, str) and value and item is not None and item.parse is not None:
            parse_text(item, value, name)
        if item is not None and item.choices and value not in item.choices:
            raise LocgenError(f"{name} {value!r}: give one of {', '.join(item.choices)}")
        if item is not None and item.name == "osm":
            _check_osm(name, value, local_files)
    if "model_uri" in parameters:
        _check_model(parameters["model_uri"], local_files)
    for prefix in ("", "target_"):
        center, grid, bbox = (parameters.get(f"{prefix}{key}") for key in ("center", "grid", "bbox"))
        if f"{prefix}grid" in parameters and not bbox and not (center and grid):
            raise LocgenError(f"no area: give {prefix}bbox W,S,E,N, or {prefix}center LAT,LON with {prefix}grid N")
    return given


def check_cities(cities, local_files: bool = True, held_out: bool = False) -> None:
    """One clear error for a `cities` parameter no training could run with, naming the item (its index and
    city) and the fix; `held_out`: the pipeline evaluates on the held-out boxes, so one city needs one."""
    if not isinstance(cities, list):
        raise LocgenError(f"cities {json.dumps(cities)}: not a JSON list; give a list of cities, like "
                          f"[{CITY_EXAMPLE}]")
    if not cities:
        raise LocgenError(f"cities []: give one or more cities to train on, like [{CITY_EXAMPLE}]")
    seen = {}
    for index, item in enumerate(cities):
        city = city_parameters(item, index)
        name = f"cities[{index}] ({city['city']})"
        _check_osm(f"{name}: osm", city["osm"], local_files)
        folder = city_prefix("", city["city"])
        if folder in seen:
            raise LocgenError(f"{name}: the same city as {seen[folder]}; give each city once (one item with all "
                              "its location sources)")
        seen[folder] = name
    if held_out and not any(item.get("holdout") for item in cities):
        raise LocgenError("cities: no city has a holdout; give at least one a held-out box W,S,E,N to evaluate on "
                          "(or run the training pipeline)")


def _check_osm(name: str, value: str, local_files: bool) -> None:
    if local_files and not value.startswith("s3://") and not Path(value).is_file():
        raise LocgenError(f"{name} {value}: no such file; give an .osm.pbf file or an s3:// URI")


def _check_model(value: str, local_files: bool) -> None:
    if not value:
        raise LocgenError(f"model_uri '': give the model to generate with: a model.onnx of locgen export, a training "
                          f"run's Model artifact URI, or the bundled {SAMPLE_MODEL}")
    if local_files and "://" not in value and not Path(value).is_file():
        raise LocgenError(f"model_uri {value}: no such file; give a model.onnx of locgen export, or an s3:// URI")


def setting_fed_by(parameter: str, classes: tuple = STAGE_SETTINGS) -> Declared | None:
    """The stage setting a pipeline or component parameter feeds: the one of its name, less one of
    PARAMETER_PREFIXES, in the first of `classes` that has it."""
    name = next((parameter.removeprefix(prefix) for prefix in PARAMETER_PREFIXES if parameter.startswith(prefix)),
                parameter)
    return next((item for cls in classes for item in declared(cls) if item.name == name), None)


# What a task imports beyond locgen's own dependencies, and the extra that installs it (pyproject.toml).
TASK_NEEDS = {"train-generator": ("train", ("torch",)), "decide-promotion": ("train", ("torch",)),
              "export-onnx": ("train,export", ("torch", "onnx", "onnxscript", "onnxruntime")),
              "generate-tiles": ("infer", ("onnxruntime",))}


def check_installed(pipeline) -> None:
    """Every module the pipeline's tasks import is installed here; else one line naming the extra to install,
    before any task runs (not after minutes of training, at the export)."""
    tasks = {re.sub(r"^comp-|-\d+$", "", name) for name in pipeline.pipeline_spec.components}
    for task in sorted(tasks & set(TASK_NEEDS)):
        extra, modules = TASK_NEEDS[task]
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise LocgenError(f"{pipeline.name}: its task '{task}' needs {module}, which does not import here "
                                  f"({one_line(error, 120)}); install it: pip install -c constraints.txt "
                                  f"'locgen[{extra}]' (or make install)") from None


def run_locally(pipeline, parameters: dict, pipeline_root: Path, verbose: bool = False, done: dict | None = None):
    """Run `pipeline` with `parameters` through kfp.local; returns the pipeline's outputs. A line a task on
    stderr, its whole log in a file under `pipeline_root`/logs (named on the first line), and with `verbose` on
    stderr too; `done` gets each task's last line (`done in ...`) by its display name."""
    parameters = check_parameters(pipeline, parameters)
    check_installed(pipeline)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    log_path = Path(pipeline_root) / "logs" / f"{pipeline.name}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: the whole log of each task goes to %s", pipeline.name, log_path)
    root_logger = logging.getLogger()
    handlers, level = root_logger.handlers[:], root_logger.level
    # kfp.local prints its log and every task's output on stdout: to the run log, so that stdout is our summary.
    run_log = RunLog(open(log_path, "a", encoding="utf-8"), sys.stderr, verbose)
    try:
        with warnings.catch_warnings(), run_log, contextlib.redirect_stdout(run_log):
            # kfp.local says, task by task, that it ignores resources and accelerators and that our images
            # are not plain Python ones: true, and meant (the project is installed right here).
            warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner")
            warnings.filterwarnings("ignore", message=r"You may be attemping to run a task that uses custom")
            return pipeline(**parameters)
    except RuntimeError as error:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(error).splitlines()[0])  # without its terminal colours
        raise LocgenError(f"{message.rstrip('.')} (its error is in {log_path}); fix the input it names and run "
                          "again: published tiles and checkpoints are reused") from None
    finally:
        if done is not None:
            done.update(run_log.done)
        # kfp.local swaps the root logger's handlers for its own while it runs, and after a failed task
        # leaves its handler, bound to the stream of that moment, behind: put back what was there.
        root_logger.handlers[:] = handlers
        root_logger.setLevel(level)


def run_sample(store: Path, overrides: dict, pretrained: bool, verbose: bool = False) -> dict:
    """The end-to-end pipeline on the sample data (with `overrides`), starting from the bundled
    generator (so a few minutes of training on a CPU never give a worse model, by the validation that
    picks the best checkpoint; `init_from=` starts afresh), or with `pretrained` the generation
    pipeline with the bundled model, for the target town and for the held-out box.

    Returns where the points, previews and the evaluation reports (one a held-out city) are.
    """
    pipelines = build_pipelines(retries=False)  # here a retry would only repeat a failure, minutes later
    root = store.resolve()
    pipeline_root = root / "kfp"
    sample = {**SAMPLE_CITY, "osm": str(PROJECT_ROOT / SAMPLE_CITY["osm"])}
    done: dict[str, str] = {}
    if not pretrained:
        parameters = {"cities": [sample], "target_osm": str(PROJECT_ROOT / SAMPLE_TARGET_OSM),
                      "store": str(root), "init_from": "bundled", **overrides}
        outputs = run_locally(pipelines["end-to-end"], parameters, pipeline_root, verbose, done).outputs
        where = _where(outputs["target_points"], outputs["holdout_points"])
    else:
        model = str(PROJECT_ROOT / SAMPLE_MODEL)
        target = {"osm": str(PROJECT_ROOT / SAMPLE_TARGET_OSM), "store": str(root), "model_uri": model, **overrides}
        held_out = {"city": sample["city"], "osm": sample["osm"], "bbox": sample["holdout"], "grid": 0, "center": "",
                    "truth": sample["locations"], "truth_bbox": sample["holdout"], "store": str(root),
                    "model_uri": model}
        where = _where(run_locally(pipelines["generate"], target, pipeline_root, verbose).output,
                       [run_locally(pipelines["generate"], held_out, pipeline_root, verbose).output])
    for line in closing_lines(where, done.get(TASKS["train_generator"][0])):
        log.info("%s", line)
    return where


def closing_lines(where: dict, trained: str | None) -> list[str]:
    """What a person reads at the end of `locgen run`: where the points are and how many, each held-out box's
    verdict and F1 within 50 m against the best baseline's, and how training went (`trained`: the train task's
    last line; None: no training)."""
    lines = [f"{where['points']} points for the target town: {where['points_csv']} (and .geojson); over the map: "
             f"{where['preview']}"]
    for held_out in where["held_out"]:
        report = json.loads(Path(held_out["evaluation_report"]).with_suffix(".json").read_text())
        f1 = report["model"]["metrics"]["f1@50m"]
        baselines = {name: scores["metrics"]["f1@50m"] for name, scores in report["baselines"].items()}
        baseline = max(baselines, key=baselines.get)
        lines.append(f"{held_out['city']}'s held-out box: {report['verdict']['line']}; F1 within 50 m {f1:.2f}, the "
                     f"best baseline's {baselines[baseline]:.2f} ({baseline}); the report, with the map and the "
                     f"training: {held_out['report_page']}")
    lines.append(f"training: {trained}" if trained else "no training: the bundled model (locgen run without "
                 "--pretrained trains one, starting from it)")
    return lines


def _where(target_points, held_out_points: list) -> dict:
    target = target_points.metadata
    return {"points_csv": target["uri"], "points_geojson": target["geojson"], "preview": target["preview"],
            "points": int(target["points"]),
            "held_out": [{"city": meta["city"], "points_csv": meta["uri"], "preview": meta["preview"],
                          "evaluation_report": meta["evaluation"].removesuffix(".json") + ".md",
                          "report_page": meta["evaluation"].removesuffix(".json") + ".html"}
                         for meta in sorted((points.metadata for points in held_out_points),
                                            key=lambda meta: meta["city"])]}
