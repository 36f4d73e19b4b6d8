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
import os
import re
import sys
import warnings
from pathlib import Path

from kfp import compiler, local

from components.core.errors import LocgenError
from components.core.geo import parse_bbox, parse_latlon
from components.train.config import PRESETS
from pipeline.images import DEFAULT_REGISTRY, REGISTRY_ENV

PIPELINE_DIR = Path(__file__).resolve().parent
GPUS_ENV = "LOCGEN_PIPELINE_GPUS"  # "0": compile pipelines whose tasks ask for no GPU
TYPE_NAMES = {int: "a whole number", float: "a number", str: "a text", list: "a JSON list", bool: "true or false"}
PROJECT_ROOT = PIPELINE_DIR.parent


def pipeline_file(name: str) -> Path:
    return PIPELINE_DIR / f"{name}.yaml"


def compile_all(out_dir: Path = PIPELINE_DIR, registry: str | None = None, gpus: bool = True) -> list[Path]:
    """Write every pipeline's YAML into out_dir: with `registry`, the images come from there; without
    `gpus`, no task asks for a GPU (a cluster without any: train and infer run on the CPU)."""
    settings = {REGISTRY_ENV: registry or os.environ.get(REGISTRY_ENV, DEFAULT_REGISTRY), GPUS_ENV: str(int(gpus))}
    with _environment(settings):
        # The images and resources are bound when the components and pipelines are defined: define them
        # anew under these settings, then once more as they were, for whoever imported them before.
        pipelines = _defined_pipelines()
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        written = []
        for name, pipeline in pipelines.items():
            path = Path(out_dir) / f"{name}.yaml"
            compiler.Compiler().compile(pipeline, str(path))
            written.append(path)
    _defined_pipelines()
    return written


@contextlib.contextmanager
def _environment(settings: dict):
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _defined_pipelines() -> dict:
    import pipeline.components
    import pipeline.images
    import pipeline.pipelines

    for module in (pipeline.images, pipeline.components, pipeline.pipelines):
        importlib.reload(module)
    return pipeline.pipelines.PIPELINES


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


def check_parameters(pipeline, given: dict, local_files: bool = True) -> None:
    """One clear error for a parameter no stage could run with, before any stage runs (`local_files`:
    OSM paths that are not s3:// must exist here)."""
    defaults = {name: value.default for name, value in inspect.signature(pipeline.pipeline_func).parameters.items()}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise LocgenError(f"unknown parameters {unknown} for {pipeline.name}; it takes {', '.join(defaults)}")
    for name, value in given.items():
        expected = type(defaults[name])
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            if not (expected is float and isinstance(value, int)):
                raise LocgenError(f"parameter {name}={json.dumps(value)}: give {TYPE_NAMES[expected]}, like "
                                  f"{json.dumps(defaults[name])}")
    parameters = {**defaults, **given}
    preset = parameters.get("preset")
    if preset is not None and preset not in PRESETS:
        raise LocgenError(f"preset {preset!r}: unknown; give one of {', '.join(sorted(PRESETS))}")
    for name, value in parameters.items():
        if not value:
            continue
        if name.endswith("bbox") or name == "holdout":
            parse_bbox(value, name)
        elif name.endswith("center"):
            parse_latlon(value, name)
        elif name.endswith("osm") and local_files and not value.startswith("s3://") and not Path(value).is_file():
            raise LocgenError(f"{name} {value}: no such file; give an .osm.pbf file or an s3:// URI")
    for prefix in ("", "target_"):
        center, grid, bbox = (parameters.get(f"{prefix}{key}") for key in ("center", "grid", "bbox"))
        if f"{prefix}grid" in parameters and not bbox and not (center and grid):
            raise LocgenError(f"no area: give {prefix}bbox W,S,E,N, or {prefix}center LAT,LON with {prefix}grid N")
    if "locations" in parameters and not parameters["locations"]:
        raise LocgenError("locations: give one or more location sources to train on")


def run_locally(pipeline, parameters: dict, pipeline_root: Path):
    """Run `pipeline` with `parameters` through kfp.local; returns the pipeline's outputs."""
    check_parameters(pipeline, parameters)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    root_logger = logging.getLogger()
    handlers, level = root_logger.handlers[:], root_logger.level
    try:
        # kfp.local prints its log and every task's output on stdout: to stderr, so that stdout is our summary.
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            # kfp.local says, task by task, that it ignores resources and accelerators and that our images
            # are not plain Python ones: true, and meant (the project is installed right here).
            warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner")
            warnings.filterwarnings("ignore", message=r"You may be attemping to run a task that uses custom")
            return pipeline(**parameters)
    except RuntimeError as error:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(error).splitlines()[0])  # without its terminal colours
        raise LocgenError(f"{message.rstrip('.')} (its error is in the log above); fix the input it names and run "
                          "again: published tiles and checkpoints are reused") from None
    finally:
        # kfp.local swaps the root logger's handlers for its own while it runs, and after a failed task
        # leaves its handler, bound to the stream of that moment, behind: put back what was there.
        root_logger.handlers[:] = handlers
        root_logger.setLevel(level)


def run_sample(store: Path, overrides: dict, pretrained: bool) -> dict:
    """The end-to-end pipeline on the sample data (with `overrides`), or with `pretrained` the
    generation pipeline with the bundled model, for the target town and for the held-out box.

    Returns where the points, previews and the evaluation report are.
    """
    from pipeline.pipelines import (
        SAMPLE_HOLDOUT,
        SAMPLE_LOCATIONS,
        SAMPLE_OSM,
        SAMPLE_TARGET_OSM,
        end_to_end_pipeline,
        generation_pipeline,
    )

    root = store.resolve()
    pipeline_root = root / "kfp"
    if not pretrained:
        parameters = {"osm": str(PROJECT_ROOT / SAMPLE_OSM), "target_osm": str(PROJECT_ROOT / SAMPLE_TARGET_OSM),
                      "store": str(root), **overrides}
        outputs = run_locally(end_to_end_pipeline, parameters, pipeline_root).outputs
        return _where(outputs["target_points"], outputs["holdout_points"])
    target = {"osm": str(PROJECT_ROOT / SAMPLE_TARGET_OSM), "store": str(root), **overrides}
    held_out = {"city": "helsinki", "osm": str(PROJECT_ROOT / SAMPLE_OSM), "bbox": SAMPLE_HOLDOUT, "grid": 0,
                "center": "", "truth": SAMPLE_LOCATIONS, "truth_bbox": SAMPLE_HOLDOUT, "store": str(root)}
    return _where(run_locally(generation_pipeline, target, pipeline_root).output,
                  run_locally(generation_pipeline, held_out, pipeline_root).output)


def _where(target_points, held_out_points) -> dict:
    target, held_out = target_points.metadata, held_out_points.metadata
    return {"points_csv": target["uri"], "points_geojson": target["geojson"], "preview": target["preview"],
            "points": int(target["points"]), "holdout_points_csv": held_out["uri"],
            "holdout_preview": held_out["preview"],
            "evaluation_report": held_out["evaluation"].removesuffix(".json") + ".md"}
