"""What each pipeline component does, importable and testable: the component bodies only call these.

Data lives in the object store (or a local folder) given as the pipeline's `store`, laid out per
city and run:

    {store}/{city}/tiles/{render}/      a tile set (a/, b/, manifest.jsonl); {render} is the hash of the
                                        render settings, so every run that renders the same reuses it
    {store}/{cities}/runs/{run}/train/  checkpoints, generator.pt, metrics.jsonl, samples/
    {store}/{cities}/runs/{run}/model.onnx  with model.fp16.onnx and model.parity.json
    {store}/{city}/runs/{run}/{render}/generated/   the generated tiles of the area rendered as {render}
    {store}/{city}/runs/{run}/{render}/points.csv, points.geojson, preview.png, report.json, report.md

`{run}` is the Kubeflow run's id; `{cities}` is the training cities' names in alphabetical order,
joined by "+" (one city: its name), as a folder: "helsinki+prague" -> helsinki-prague. Each KFP
artifact is a pointer: its metadata holds the `uri` of the data, and the lineage (city, area, sources
and their sha256, style version, parent artifacts, project version, git commit); its file holds the
same as JSON, for the Kubeflow UI.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np

from components import __version__
from components.core.errors import GPU_NODE_FIX, LocgenError
from components.core.geo import parse_bbox
from components.core.logs import log_to_stderr
from components.core.progress import duration_text
from components.core.provenance import OSM_ATTRIBUTION, git_commit
from components.core.settings import from_parameters, output_identity, unset
from components.core.storage import default_cache_dir, local_file, open_file_uri, open_store
from components.core.style import STYLE_VERSION
from components.core.tileset import MANIFEST_KEY

KFP_POD_ENV = "KFP_POD_NAME"  # set in every task pod by KFP's backend (its driver and launcher read it)

log = logging.getLogger(__name__)
DONE = "done in"  # a task's last line: "done in 12 s: 120 tiles, 120 rendered" (what locgen run shows of it)
# The metrics that line shows, in words: what each task made, and how good a model or its points are.
HEADLINE = {"tiles": "tiles", "tiles_rendered": "rendered", "tiles_generated": "generated", "points": "points",
            "steps": "steps", "validation_place_score": "place score",
            "started_from_place_score": "place score of the model it started from", "fp16_dot_f1": "fp16 dots' F1",
            "evaluation_points_generated": "points scored", "evaluation_metrics_f1@50m": "F1 within 50 m",
            "promote": "better (1) or not (0)", "promoted": "promoted"}


def timed(step):
    """Log the step's wall time as the metric `seconds` (the local run's benchmark reads it too), and, as the
    task's last line for a person, how long it took and its HEADLINE metrics."""
    @functools.wraps(step)
    def run(*args, **kwargs):
        log_to_stderr()  # a task runs in a process of its own: its progress and messages go to its log
        started = time.perf_counter()
        result = step(*args, **kwargs)
        seconds = round(time.perf_counter() - started, 2)
        log_metrics(kwargs["metrics"], {"seconds": seconds})
        made = kwargs["metrics"].metadata
        shown = [f"{_figure(made[name])} {words}" for name, words in HEADLINE.items() if name in made]
        log.info("%s %s%s", DONE, duration_text(seconds), ": " + ", ".join(shown) if shown else "")
        return result
    return run


def _figure(value: float) -> str:
    """2000, 25, 0.383: a count whole, a score to three figures."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def city_prefix(store: str, city: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", city.lower()).strip("-")
    if not slug:
        raise LocgenError(f"city {city!r}: give a name with letters or digits (it names the object-store folder)")
    return f"{store.rstrip('/')}/{slug}"


def run_uri(store: str, city: str, run_id: str, name: str) -> str:
    return f"{city_prefix(store, city)}/runs/{run_id}/{name}"


def lineage(city: str, parents: list[str], **facts) -> dict:
    """The metadata every artifact carries (facts: area, sources, ... as each stage knows them)."""
    return {"city": city, **facts, "parents": parents, "style_version": STYLE_VERSION, "locgen_version": __version__,
            "git_commit": git_commit()}


def publish_pointer(artifact, uri: str, metadata: dict) -> None:
    """Make `artifact` point at `uri` (its metadata and its file) with `metadata` (`launchable`)."""
    artifact.metadata.update(launchable({"uri": uri, **metadata}))
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(json.dumps(artifact.metadata, indent=2, ensure_ascii=False))


def publish_file(artifact, uri: str, metadata: dict) -> None:
    """As `publish_pointer`, but the artifact's file is the object at `uri` itself: KFP uploads an artifact's path
    to its own store, so the UI's Download (and an importer of that artifact) gives the file, a model, not a note."""
    artifact.metadata.update(launchable({"uri": uri, **metadata}))
    store, key = open_file_uri(uri)
    store.download_to(key, Path(artifact.path))


def launchable(metadata: dict) -> dict:
    """`metadata` as KFP's launcher takes it: a value that is null, NaN or infinite is left out with its key, at any
    depth (the launcher's converter has no null, and Go's JSON parser refuses NaN and infinity; left out reads as
    "not known", which is what they meant)."""
    return {key: _launchable(value, key) for key, value in metadata.items() if _known(value)}


def _known(value) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def _launchable(value, key: str):
    if isinstance(value, dict):
        return launchable(value)
    if isinstance(value, (list, tuple)):
        if not all(_known(item) for item in value):  # a place in a list has a meaning: no gap may appear
            raise ValueError(f"artifact metadata {key}: {value!r} holds a null or non-finite item")
        return [_launchable(item, key) for item in value]
    return value


def log_metrics(metrics, values: dict) -> None:
    """Log `values` to a Metrics artifact, each a number; one that could not be computed (NaN, such as a dot rate
    with no held-out tile) is left out, as `launchable` leaves it out of metadata."""
    for name, value in launchable(values).items():
        metrics.log_metric(name, value)


def asked_gpus(gpus, parameter: str) -> int:
    """The GPU count a task was given: a pipeline's GPU parameter is a text ('1'), since KFP's driver takes a
    parameterised accelerator count only from a string value (given a number, the pod gets no GPU)."""
    if not re.fullmatch(r"\d+", str(gpus).strip()):
        raise LocgenError(f"{parameter} {gpus!r}: give a whole number of GPUs as a text, e.g. '1' (0: the CPU)")
    return int(gpus)


def in_kfp_pod() -> bool:
    """Whether this runs in a task pod of KFP's backend (kfp.local sets no KFP_POD_NAME)."""
    return bool(os.environ.get(KFP_POD_ENV))


def check_gpus_seen(asked: int, seen: int, parameter: str, what: str) -> None:
    """In a KFP pod, a task given GPUs fails when it sees fewer rather than run for hours on the CPU. Locally the
    count is a request that no runner grants: the task runs on what is here."""
    if asked and seen < asked and in_kfp_pod():
        raise LocgenError(f"{parameter} {asked}: this pod's {what} sees {seen} GPU(s); {GPU_NODE_FIX}")


def model_source(onnx_model) -> str:
    """Where a task reads a model artifact from: the object a locgen task published (its metadata's uri, with the
    fp16 variant beside it); else, an imported file, from the object store or this machine where it lies there, or
    from the copy KFP's launcher put at the artifact's path (a URI of KFP's own store, minio:// or gs://)."""
    uri = onnx_model.metadata.get("uri") or onnx_model.uri
    return uri if uri.startswith("s3://") or "://" not in uri else onnx_model.path


def pointed_uri(artifact) -> str:
    uri = artifact.metadata.get("uri")
    if not uri:
        raise LocgenError(f"input artifact {artifact.uri}: no 'uri' in its metadata; give an artifact a locgen "
                          "component wrote")
    return uri


# --- render -----------------------------------------------------------------------------------------

CITY_KEYS = ("city", "osm", "locations", "holdout")  # an item of a pipeline's `cities`; holdout may be left out
CITY_EXAMPLE = ('{"city": "helsinki", "osm": "s3://locgen/osm/helsinki.osm.pbf", '
                '"locations": ["osm:amenity=bicycle_rental"], "holdout": "24.93,60.16,24.95,60.17"}')


def city_parameters(city, index: int | None = None) -> dict:
    """An item (number `index`, where known) of a pipeline's `cities` as render parameters: city, osm,
    locations, holdout ("" for none); one clear error for an item no render could run with (its files
    are not looked at here)."""
    name = "cities item" if index is None else f"cities[{index}]"
    name += f" ({city['city']})" if isinstance(city, dict) and "city" in city else ""
    if not isinstance(city, dict):
        raise LocgenError(f"{name} {json.dumps(city)}: not an object; give each city as {CITY_EXAMPLE}")
    unknown = sorted(set(city) - set(CITY_KEYS))
    if unknown:
        raise LocgenError(f"{name}: unknown keys {unknown}; an item takes {', '.join(CITY_KEYS)}, like {CITY_EXAMPLE}")
    missing = [key for key in CITY_KEYS[:3] if key not in city]
    if missing:
        raise LocgenError(f"{name}: no {', '.join(missing)}; give each of city, osm, locations (holdout may be "
                          f"left out), like {CITY_EXAMPLE}")
    if not isinstance(city["city"], str) or not re.search(r"[A-Za-z0-9]", city["city"]):
        raise LocgenError(f"{name}: city {json.dumps(city['city'])}: give a name with letters or digits (it names "
                          "the object-store folder)")
    if not isinstance(city["osm"], str) or not city["osm"]:
        raise LocgenError(f"{name}: osm {json.dumps(city['osm'])}: give one .osm.pbf path or s3:// URI as a text")
    locations = city["locations"]
    if not isinstance(locations, list) or not all(isinstance(source, str) and source for source in locations):
        raise LocgenError(f"{name}: locations {json.dumps(locations)}: give a list of location sources, like "
                          '["osm:amenity=bicycle_rental"]')
    if not locations:
        raise LocgenError(f"{name}: locations: give one or more location sources to train on")
    holdout = city.get("holdout", "")
    if not isinstance(holdout, str):
        raise LocgenError(f"{name}: holdout {json.dumps(holdout)}: give W,S,E,N as a text, or \"\" for none")
    if holdout:
        parse_bbox(holdout, f"{name}: holdout")
    return {"city": city["city"], "osm": city["osm"], "locations": list(locations), "holdout": holdout}


def held_out_cities_step(cities: list) -> list[dict]:
    """The cities with a held-out box, in the order given (each as city_parameters gives it)."""
    return [city for city in (city_parameters(item, index) for index, item in enumerate(cities)) if city["holdout"]]


@timed
def render_step(store: str, shard: int, shards: int, tiles, metrics, **render) -> None:
    """Render one shard of a tile set (every shards-th planned tile); collect_step publishes the whole,
    or with one shard this task does (`tiles` then carries what collect_step's does).

    `render`: settings of RenderSettings by name (0 and "" for "not given"). The tile set's folder is
    named by every setting that shapes the tiles, so renders that differ never share one.
    """
    from components.render.job import RenderSettings
    from components.render.job import render as render_tileset

    city = render["city"]
    settings = from_parameters(RenderSettings, render, out="", workers=0, progress=True, shard=shard, shards=shards)
    identity = {name: value for name, value in output_identity(settings).items() if value is not None}
    settings.out = f"{city_prefix(store, city)}/tiles/{_short_hash(identity)}"
    summary = render_tileset(settings)
    metadata = lineage(city, [], render=identity, shard=shard, shards=shards)
    if shards == 1:
        publish_tile_set(tiles, settings.out, metadata)
    else:
        publish_pointer(tiles, settings.out, metadata)
    # data_share: of the area, inside the OSM data's extent
    log_metrics(metrics, {"tiles": summary["tiles"], "tiles_rendered": summary["rendered"],
                          "data_share": summary["data_share"]})


def render_city_step(store: str, city: dict, tiles, metrics, **render) -> None:
    """Render one city's training pairs (`city`: an item of `cities`; `render`: the pair settings) as one
    task: the whole tile set, published as collect_step publishes one."""
    render_step(store=store, shard=0, shards=1, tiles=tiles, metrics=metrics, **city_parameters(city),
                **{"bbox": "", "center": "", "grid": 0, **render})


@timed
def collect_step(parts: list, tiles, metrics) -> None:
    """The tile set the shards made: their manifest parts merged in plan order, and its lineage."""
    from components.core.tileset import merge_manifest_parts, read_manifest

    uris = {pointed_uri(part) for part in parts}
    if len(uris) != 1:
        raise LocgenError(f"shards of different tile sets {sorted(uris)}: collect the shards of one tile set")
    uri = uris.pop()
    shards = int(parts[0].metadata["shards"])
    store = open_store(uri)
    rows = merge_manifest_parts(store, shards) if shards > 1 else read_manifest(store)
    if not rows:
        raise LocgenError(f"{uri}: the shards made no tile; check the area parameters")
    shared = {key: value for key, value in parts[0].metadata.items() if key not in ("uri", "shard")}
    publish_tile_set(tiles, uri, shared, rows)
    log_metrics(metrics, {"tiles": len(rows), "shards": shards})


def publish_tile_set(artifact, uri: str, metadata: dict, rows: list[dict] | None = None) -> None:
    """Make `artifact` point at the whole tile set `uri`: `metadata` and what its manifest (`rows`: read
    here when not given) says: the area, tiles, domains, sources with their sha256, the manifest's sha256."""
    from components.core.tileset import read_manifest

    store = open_store(uri)
    rows = read_manifest(store) if rows is None else rows
    if not rows:
        raise LocgenError(f"{uri}: no tile in its manifest; check the area parameters")
    sources = {source["uri"]: source["sha256"] for row in rows for source in row["sources"]}
    publish_pointer(artifact, uri, {
        **metadata, "area": _area(rows), "tiles": len(rows), "domains": sorted({row["domain"] for row in rows}),
        "sources": [{"uri": source, "sha256": sha} for source, sha in sorted(sources.items())],
        "manifest_sha256": hashlib.sha256(store.get_bytes(MANIFEST_KEY)).hexdigest(), "attribution": OSM_ATTRIBUTION})


def _short_hash(document: dict) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def _area(rows: list[dict]) -> list[float]:
    """The lon/lat bbox the tiles cover: west, south, east, north."""
    bounds = [row["bounds_lonlat"] for row in rows]
    return [min(b[0] for b in bounds), min(b[1] for b in bounds), max(b[2] for b in bounds), max(b[3] for b in bounds)]


# --- train and export -------------------------------------------------------------------------------

def training_sets(training_tiles: list) -> list:
    """The training tile sets (one a city) in the order train and export read them: by city name, so
    that the run, its folder and its lineage do not depend on the order the tasks were collected in."""
    tile_sets = sorted(training_tiles, key=lambda tiles: (tiles.metadata["city"], pointed_uri(tiles)))
    if not tile_sets:
        raise LocgenError("no training tile set: give one or more cities")
    cities = [tiles.metadata["city"] for tiles in tile_sets]
    twice = sorted({city for city in cities if cities.count(city) > 1})
    if twice:
        raise LocgenError(f"cities {twice}: each given more than once; give each city once in `cities`")
    return tile_sets


def training_city(tile_sets: list) -> str:
    """The name a run on these tile sets goes under: the cities' names joined by "+"."""
    return "+".join(tiles.metadata["city"] for tiles in tile_sets)


@timed
def train_step(store: str, run_id: str, preset: str, steps: int, batch_size: int, init_from: str, gpus: str,
               nodes: int, job: dict, training_tiles: list, generator, metrics) -> None:
    """Train on every city's tile set together (one process per GPU through torchrun when gpus > 1; on `nodes`
    pods of a distributed job, `gpus` processes each, when nodes > 1), resuming the run's checkpoint after a
    retry; steps and batch_size 0: the preset's; init_from (a generator, a checkpoint or "bundled"; "": none) the
    model a new run starts from; job: the settings of a distributed job's pods (the pipeline's)."""
    import torch

    from components.train.config import TrainSettings, preset_config
    from components.train.generator_file import GENERATOR_KEY, load_generator
    from components.train.train import train
    from pipeline import trainjob

    processes = asked_gpus(gpus, "train_gpus")
    if nodes < 1:
        raise LocgenError(f"train_nodes {nodes}: give 1 (this task's pod) or more (a distributed job)")
    cluster = trainjob.in_cluster_client() if nodes > 1 else None  # first: outside a cluster, one line at once
    if nodes == 1:
        check_gpus_seen(processes, torch.cuda.device_count(), "train_gpus", "PyTorch")
    tile_sets = training_sets(training_tiles)
    uris = [pointed_uri(tiles) for tiles in tile_sets]
    city = training_city(tile_sets)
    config = preset_config(preset, unset(steps), unset(batch_size))
    out = run_uri(store, city, run_id, "train")
    started_from = unset(init_from)
    # Every way of training resumes the run's checkpoint where there is one: a retried task, a replaced job.
    arguments = [*(argument for uri in uris for argument in ("--data", uri)), "--out", out, "--preset", preset,
                 "--steps", str(config.steps), "--batch-size", str(config.batch_size), "--resume-if-any",
                 *(["--init-from", started_from] if started_from else [])]
    if cluster:
        api_client, namespace = cluster
        trainjob.launch_and_wait(distributed_training(job, run_id, namespace, nodes, processes, arguments), api_client)
    elif processes > 1:
        _torchrun(processes, arguments)
    else:
        train(TrainSettings(data=uris, out=out, config=config, resume_if_any=True, init_from=started_from,
                            progress=True))
    best = load_generator(f"{out}/{GENERATOR_KEY}")[1]["validation"]
    publish_pointer(generator, f"{out}/{GENERATOR_KEY}", lineage(
        city, uris, cities=[tiles.metadata["city"] for tiles in tile_sets], area=_union_area(tile_sets),
        sources=_union_sources(tile_sets), preset=preset, steps=config.steps,
        **({"init_from": started_from} if started_from else {}), batch_size=config.batch_size,
        nodes=nodes, processes=nodes * max(processes, 1),
        training_manifest_sha256=[tiles.metadata["manifest_sha256"] for tiles in tile_sets],
        validation=best))
    rows = _train_metrics(out)
    log_metrics(metrics, {"steps": max(row.get("step", 0) for row in rows), "cities": len(tile_sets)})
    last_losses = next((row for row in reversed(rows) if "loss_nce" in row), {})
    # A warm start's step 0 is the model it started from: beside the chosen one, what the run bought.
    start = next((row["validation"] for row in rows if "validation" in row), None) if started_from else None
    log_metrics(metrics, {**{f"last_{k}": v for k, v in last_losses.items() if k.startswith("loss_")},
                          **_flat_numbers(best, "validation_"),
                          **(_flat_numbers(start, "started_from_") if start else {})})


def distributed_training(job: dict, run_id: str, namespace: str, nodes: int, gpus_per_node: int,
                         train_arguments: list[str]):
    """The distributed job of a run, in `namespace`: `job` (the pipeline's pod settings, named as
    DistributedTraining's fields), named and labelled after the run."""
    from pipeline.trainjob import DistributedTraining, job_labels, job_name

    settings = {**job, "secret_variables": tuple(job["secret_variables"]),
                "gpu_node_selector": dict(job.get("gpu_node_selector") or {})}
    return DistributedTraining(name=job_name(run_id), namespace=namespace, train_arguments=train_arguments,
                               nodes=nodes, gpus_per_node=gpus_per_node, labels=job_labels(run_id), **settings)


def _union_area(tile_sets: list) -> list[float]:
    """The lon/lat bbox around the areas of the tile sets (one set: its area)."""
    areas = [tiles.metadata["area"] for tiles in tile_sets]
    return [min(a[0] for a in areas), min(a[1] for a in areas), max(a[2] for a in areas), max(a[3] for a in areas)]


def _union_sources(tile_sets: list) -> list[dict]:
    """Every source of the tile sets, once, by URI."""
    sources = {source["uri"]: source for tiles in tile_sets for source in tiles.metadata.get("sources") or []}
    return [sources[uri] for uri in sorted(sources)]


def _torchrun(processes: int, train_arguments: list[str]) -> None:
    """`locgen train` in `processes` DDP processes on this machine (one per GPU; gloo on a CPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "locgen", "train", *train_arguments]
    exit_code = subprocess.run(command, check=False).returncode
    if exit_code:
        raise LocgenError(f"train: torchrun with {processes} processes failed (exit {exit_code}); the failing "
                          "process's error is in the log above")


def _train_metrics(out: str) -> list[dict]:
    from components.train.train import METRICS_KEY

    return [json.loads(line) for line in open_store(out).get_bytes(METRICS_KEY).decode().splitlines() if line]


@timed
def export_step(store: str, run_id: str, generator, training_tiles: list, onnx_model, metrics) -> None:
    """Export the generator; the parity check runs on the plain tiles of the first training set (by city name)."""
    from components.export.exporter import ExportSettings, export

    city = generator.metadata["city"]
    tile_uris = [pointed_uri(tiles) for tiles in training_sets(training_tiles)]
    out = run_uri(store, city, run_id, "model.onnx")
    summary = export(ExportSettings(out=out, checkpoint=pointed_uri(generator), tiles=tile_uris[0]))
    publish_file(onnx_model, out, lineage(
        city, [pointed_uri(generator), *tile_uris], cities=generator.metadata.get("cities", [city]),
        area=generator.metadata.get("area"), sources=generator.metadata.get("sources"),
        opset=summary["opset"], fp16_model=summary["fp16_model"], parity_report=summary["parity_report"],
        fp32_max_abs_diff=summary["fp32_max_abs_diff"], fp16_dot_f1=summary["fp16_dot_f1"]))
    log_metrics(metrics, {"fp32_max_abs_diff": summary["fp32_max_abs_diff"], "fp16_dot_f1": summary["fp16_dot_f1"]})


# --- promotion ---------------------------------------------------------------------------------------

CURRENT_KEY = "models/current.json"  # under a city set's folder: which model is in use there, with its lineage
PROMOTION_NAME = "promotion.json"  # in the run's folder: the decision and both models' validation


def current_uri(store: str, city: str) -> str:
    return f"{city_prefix(store, city)}/{CURRENT_KEY}"


def read_current(store: str, city: str) -> dict | None:
    """The city set's current model (what promote_step published), or None."""
    store_of, key = open_file_uri(current_uri(store, city))
    return json.loads(store_of.get_bytes(key)) if store_of.exists(key) else None


@timed
def decide_promotion_step(store: str, run_id: str, generator, training_tiles: list, metrics) -> bool:
    """Validate the run's generator and the city set's current one on the same held-out tiles and boxes (this
    run's); True when the run's is better by the rule that chose its checkpoint, or there is none to beat."""
    from components.train.config import TrainConfig
    from components.train.train import compare_generators

    city = generator.metadata["city"]
    current = read_current(store, city)
    decision = compare_generators(pointed_uri(generator), current["generator"] if current else None,
                                  [pointed_uri(tiles) for tiles in training_sets(training_tiles)],
                                  TrainConfig().validation_share, default_cache_dir())
    report = {**decision, "run_id": run_id, "current_model": current}
    store_of, key = open_file_uri(run_uri(store, city, run_id, PROMOTION_NAME))
    store_of.publish_bytes(key, json.dumps(launchable(report), indent=2).encode(), "application/json")
    log_metrics(metrics, {"promote": int(decision["promote"]),
                          **_flat_numbers({"new": decision["new"], "current": decision["current"] or {}})})
    return decision["promote"]


@timed
def promote_step(store: str, run_id: str, onnx_model, generator, model, metrics) -> None:
    """Make the run's model the city set's current one: one object, {store}/{cities}/models/current.json,
    published at once, names its files and lineage; `model` is that model, as this task's artifact (whose URI in
    KFP's store current.json records as `artifact_uri`: what the generation pipeline's model_uri imports, so ML
    Metadata links a generation run to the training run of its model)."""
    city = onnx_model.metadata["city"]
    current = {"run_id": run_id, "model": pointed_uri(onnx_model), "fp16_model": onnx_model.metadata["fp16_model"],
               "parity_report": onnx_model.metadata["parity_report"], "generator": pointed_uri(generator),
               "validation": generator.metadata.get("validation"), "promotion": run_uri(store, city, run_id,
                                                                                         PROMOTION_NAME),
               "artifact_uri": model.uri, "lineage": dict(onnx_model.metadata)}
    store_of, key = open_file_uri(current_uri(store, city))
    store_of.publish_bytes(key, json.dumps(launchable(current), indent=2).encode(), "application/json")
    publish_file(model, pointed_uri(onnx_model), lineage(
        city, [pointed_uri(onnx_model)], cities=onnx_model.metadata.get("cities", [city]),
        area=onnx_model.metadata.get("area"), sources=onnx_model.metadata.get("sources"),
        current=current_uri(store, city), run_id=run_id))
    log_metrics(metrics, {"promoted": 1})


# --- infer, extract, evaluate -----------------------------------------------------------------------

@timed
def generate_step(store: str, run_id: str, provider: str, batch_size: int, shard: int, shards: int, gpus: str,
                  onnx_model, tiles, generated, metrics) -> None:
    """Translate one shard of the plain tiles (every shards-th) with the model artifact (exported by this run, or
    imported); collect_step publishes the whole, or with one shard this task does. In a KFP pod given a GPU
    (`gpus`), a model that would run on the CPU is an error before any tile."""
    from components.infer.job import generate
    from components.infer.settings import GenerateSettings

    city = tiles.metadata["city"]
    area = pointed_uri(tiles).rstrip("/").rsplit("/", 1)[-1]  # the render's hash: areas of one city stay apart
    out = run_uri(store, city, run_id, f"{area}/generated")
    inference = {"model": model_source(onnx_model), "provider": provider, "batch_size": batch_size}
    require_gpu = asked_gpus(gpus, "gpus") > 0 and in_kfp_pod()
    summary = generate(from_parameters(GenerateSettings, inference, tiles=pointed_uri(tiles), out=out, progress=True,
                                       shard=shard, shards=shards, require_gpu=require_gpu))
    metadata = lineage(city, [summary["model"], pointed_uri(tiles)], provider=summary["provider"],
                       model_sha256=summary["model_sha256"], shard=shard, shards=shards)
    if shards == 1:  # the whole generated set: published as collect_step publishes one
        publish_tile_set(generated, out, metadata)
    else:
        publish_pointer(generated, out, metadata)
    # colour_cast_mean, a health signal: how much the model recolours the map (none without a plain tile)
    log_metrics(metrics, {"tiles": summary["tiles"], "tiles_generated": summary["generated"],
                          "colour_cast_mean": summary["colour_cast_mean"]})


@timed
def extract_step(count: int, truth: list[str], truth_bbox: str, class_shares: str, osm: str, generated, points,
                 preview, summary, metrics) -> None:
    """Extract the points (CSV, GeoJSON, preview) beside the generated tile set (with `count`, the best
    that many; 0: every dot); with `truth`, score them in `truth_bbox` against it (and, with
    `class_shares`, against the baseline fitted on the training cities too)."""
    from components.extract.job import ExtractSettings, extract

    city = generated.metadata["city"]
    tiles_uri = pointed_uri(generated)
    folder = tiles_uri.rstrip("/").rsplit("/", 1)[0]
    csv_uri, geojson_uri, preview_uri, painted_uri = (
        f"{folder}/{name}" for name in ("points.csv", "points.geojson", "preview.png", "preview-generated.png"))
    result = extract(ExtractSettings(tiles=tiles_uri, out=[csv_uri, geojson_uri], preview=preview_uri,
                                     preview_generated=painted_uri, count=unset(count), progress=True))
    rows = [("city", city), ("tiles", result["tiles"]), ("points", result["points"]), ("points (CSV)", csv_uri),
            ("points (GeoJSON)", geojson_uri), ("the generated tiles, with the points", painted_uri),
            ("rejected blobs (not markers)", _rejected_text(result["rejected_blobs"]))]
    report = _evaluate(csv_uri, list(truth), truth_bbox, class_shares, osm, metrics) if truth else None
    if report is not None:
        rows += [("evaluation", report["uri"]), ("verdict", report["verdict"])]
    publish_pointer(points, csv_uri, lineage(
        city, [tiles_uri], area=generated.metadata.get("area"), sources=generated.metadata.get("sources"),
        geojson=geojson_uri, preview=preview_uri, preview_generated=painted_uri,
        points=result["points"], evaluation=report["uri"] if report else None, attribution=OSM_ATTRIBUTION))
    # points_outside: dots in a border band or beyond the data; rejected blobs: magenta that no marker-sized
    # discs explain
    log_metrics(metrics, {"tiles": result["tiles"], "points": result["points"], "points_outside": result["outside"],
                          **{f"rejected_blobs_{reason}": count for reason, count in result["rejected_blobs"].items()}})
    preview_store, preview_key = open_file_uri(preview_uri)
    title = f"locgen: predicted positions in {city}"
    preview_png = preview_store.get_bytes(preview_key)
    page = _html_page(title, preview_png, rows) if report is None else _report_page(
        title, report["uri"], preview_png, list(truth), osm, generated.metadata.get("parents", [None])[0])
    Path(preview.path).write_text(page)
    Path(summary.path).write_text(_markdown(title, rows) + (f"\n{report['markdown']}" if report else ""))


def _report_page(title: str, report_uri: str, preview_png: bytes, truth: list[str], osm: str,
                 model_uri: str | None) -> str:
    """The report page, published as report.html beside report.json: the preview with the real points over it,
    the metrics, and the training record of a model this pipeline trained (its run's train/metrics.jsonl)."""
    from components.extract.report_page import report_page
    from components.sources.locations import load_locations

    store, key = open_file_uri(report_uri)
    osm_files = [str(local_file(osm, default_cache_dir() / "osm"))] if osm else []
    truth_lonlat = np.array([(point.lon, point.lat) for spec in truth
                             for point in load_locations(spec, osm_files=osm_files).points]).reshape(-1, 2)
    training = None
    if model_uri and model_uri.endswith("/model.onnx"):
        training_store, training_key = open_file_uri(model_uri.removesuffix("model.onnx") + "train/metrics.jsonl")
        if training_store.exists(training_key):
            training = [json.loads(line) for line in training_store.get_bytes(training_key).decode().splitlines()
                        if line]
    page = report_page(title, json.loads(store.get_bytes(key)), preview_png, truth_lonlat, training)
    store.publish_bytes(str(PurePosixPath(key).with_suffix(".html")), page.encode(), "text/html")
    return page


def _rejected_text(rejected: dict[str, int]) -> str:
    """'frame 4, stripe 1', or 'none'."""
    return ", ".join(f"{reason} {count}" for reason, count in rejected.items() if count) or "none"


def _evaluate(points_uri: str, truth: list[str], bbox: str, class_shares: str, osm: str, metrics) -> dict:
    """Score the points against the truth and the baselines; the model's numbers go to the metrics."""
    from components.extract.evaluate import EvaluateSettings, evaluate

    if not bbox:
        raise LocgenError("truth given without truth_bbox: give the area W,S,E,N to score the points in")
    out = points_uri.rsplit("/", 1)[0] + "/report.json"
    osm_files = [str(local_file(osm, default_cache_dir() / "osm"))] if osm else []
    result = evaluate(EvaluateSettings(generated=points_uri, truth=truth, bbox=parse_bbox(bbox, "truth_bbox"),
                                       out=out, osm=osm_files, class_shares=unset(class_shares), progress=True))
    log_metrics(metrics, _flat_numbers(result["model"], "evaluation_"))
    store, key = open_file_uri(out.removesuffix(".json") + ".md")
    return {"uri": out, "verdict": result["verdict"]["line"], "markdown": store.get_bytes(key).decode()}


def _flat_numbers(scores: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a nested score dict, by joined names (KFP metrics are flat)."""
    flat = {}
    for name, value in scores.items():
        if isinstance(value, dict):
            flat.update(_flat_numbers(value, f"{prefix}{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{name}"] = float(value)
    return flat


def _html_page(title: str, png: bytes, rows: list[tuple[str, object]]) -> str:
    """One self-contained page for the Kubeflow UI: the preview as an embedded image, a table, the attribution."""
    table = "".join(f"<tr><th>{html.escape(str(name))}</th><td>{html.escape(str(value))}</td></tr>"
                    for name, value in rows)
    image = base64.b64encode(png).decode()
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{table}</table>"
            f"<img alt='preview' style='max-width:100%' src='data:image/png;base64,{image}'>"
            f"<p>{html.escape(OSM_ATTRIBUTION)}</p></body></html>")


def _markdown(title: str, rows: list[tuple[str, object]]) -> str:
    lines = [f"# {title}", "", "| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows), "",
             OSM_ATTRIBUTION, ""]
    return "\n".join(lines)
