"""The pipelines: training (render pairs -> train -> export), generation (render an area -> infer ->
extract, and evaluate where truth is given), and the two chained end to end.

The defaults are the bundled sample data (paths relative to a checkout, what `locgen run` uses): on a
cluster, give the OSM data, locations and `store` as s3:// URIs. Every task reads the object-store
settings (AWS_* variables) from the Kubernetes Secret OBJECT_STORE_SECRET. GPU tasks ask for NVIDIA
GPUs (train: `train_gpus` of them in one pod, one DDP process each; infer: one per shard) and tolerate
the usual GPU taint. Only render is cached: its output is a pure
function of its inputs; the other tasks write into their run's folder, so a cache hit would leave
that folder empty.
"""

import os
from typing import List, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Model

from pipeline.components import (
    collect_tiles,
    export_onnx,
    extract_points,
    generate_tiles,
    render_tiles,
    shard_indices,
    train_generator,
)

OBJECT_STORE_SECRET = "locgen-object-store"  # keys named as the variables (manifests/ has the template)
OBJECT_STORE_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
GPU_RESOURCE = "nvidia.com/gpu"
# locgen compile --cpu-only sets it to 0: no task asks for a GPU (train and infer then run on the CPU).
USE_GPUS = os.environ.get("LOCGEN_PIPELINE_GPUS", "1") != "0"
# (cpu request, cpu limit, memory request, memory limit) per task kind
RESOURCES = {"cpu": ("1", "4", "2G", "8G"), "gpu": ("4", "8", "16G", "32G")}

SAMPLE_OSM = "data/osm/helsinki-center.osm.pbf"
SAMPLE_TARGET_OSM = "data/osm/kotka-karhula.osm.pbf"
SAMPLE_LOCATIONS = ["osm:amenity=bicycle_rental,amenity=bicycle_parking"]
SAMPLE_HOLDOUT = "24.9351,60.1641,24.9535,60.1680"  # central Helsinki kept out of training, to evaluate on
SAMPLE_STORE = "out/pipeline"
PLAIN_MARKER_RADIUS_PX = 3.0  # plain tiles draw no marker; a valid radius keeps their render settings valid
RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER


def _on_cluster(task: dsl.PipelineTask, gpus=None, cache: bool = False) -> dsl.PipelineTask:
    """Resources, the object-store Secret, and for GPU tasks (gpus: a count or a pipeline parameter)
    the accelerator and its toleration, unless compiled for a cluster without GPUs."""
    gpu = gpus is not None and USE_GPUS
    cpu_request, cpu_limit, memory_request, memory_limit = RESOURCES["gpu" if gpu else "cpu"]
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    task.set_caching_options(cache)
    kubernetes.use_secret_as_env(task, secret_name=OBJECT_STORE_SECRET,
                                 secret_key_to_env={name: name for name in OBJECT_STORE_VARIABLES})
    if gpu:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
        kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    return task


def _rendered(store: str, city: str, osm: str, locations: List[str], pairs: int, bbox: str, center: str, grid: int,
              holdout: str, marker_radius_px: float, seed: int, shards: int) -> dsl.PipelineTask:
    """Render a tile set in `shards` parallel tasks and collect it; returns the collect task."""
    indices = _on_cluster(shard_indices(shards=shards), cache=True)
    with dsl.ParallelFor(items=indices.output) as shard:
        part = _on_cluster(render_tiles(store=store, city=city, osm=osm, locations=locations, pairs=pairs, bbox=bbox,
                                        center=center, grid=grid, holdout=holdout, marker_radius_px=marker_radius_px,
                                        seed=seed, shard=shard, shards=shards), cache=True)
    return _on_cluster(collect_tiles(parts=dsl.Collected(part.outputs["tiles"])), cache=True)


def _train(store: str, city: str, osm: str, locations: List[str], pairs: int, holdout: str, marker_radius_px: float,
           seed: int, preset: str, steps: int, batch_size: int, shards: int, gpus: int) -> dsl.PipelineTask:
    """The training tasks; returns the export task, whose onnx_model is the trained model."""
    pairs_task = _rendered(store, city, osm, locations, pairs, "", "", 0, holdout, marker_radius_px, seed, shards)
    training = _on_cluster(train_generator(store=store, run_id=RUN_ID, preset=preset, steps=steps,
                                           batch_size=batch_size, gpus=gpus,
                                           training_tiles=pairs_task.outputs["tiles"]), gpus=gpus)
    return _on_cluster(export_onnx(store=store, run_id=RUN_ID, generator=training.outputs["generator"],
                                   training_tiles=pairs_task.outputs["tiles"]))


def _generate(store: str, city: str, osm: str, bbox: str, center: str, grid: int, model_uri: str, provider: str,
              batch_size: int, truth: List[str], truth_bbox: str, shards: int, onnx_model=None) -> dsl.PipelineTask:
    """The generation tasks for one area, rendered and translated in `shards` parallel tasks each; returns the
    extract task."""
    area = _rendered(store, city, osm, [], 0, bbox, center, grid, "", PLAIN_MARKER_RADIUS_PX, 0, shards)
    model = {} if onnx_model is None else {"onnx_model": onnx_model}  # none: model_uri, else the bundled model
    indices = _on_cluster(shard_indices(shards=shards), cache=True)
    with dsl.ParallelFor(items=indices.output) as shard:
        part = _on_cluster(generate_tiles(store=store, run_id=RUN_ID, model_uri=model_uri, provider=provider,
                                          batch_size=batch_size, shard=shard, shards=shards,
                                          tiles=area.outputs["tiles"], **model), gpus=1)
    generated = _on_cluster(collect_tiles(parts=dsl.Collected(part.outputs["generated"])))
    return _on_cluster(extract_points(truth=truth, truth_bbox=truth_bbox, osm=osm,
                                      generated=generated.outputs["tiles"]))


@dsl.pipeline(name="locgen-train", description="Render training pairs for a city, train FastCUT, export to ONNX.")
def training_pipeline(city: str = "helsinki", osm: str = SAMPLE_OSM, locations: List[str] = SAMPLE_LOCATIONS,
                      pairs: int = 400, holdout: str = SAMPLE_HOLDOUT, marker_radius_px: float = 5.0, seed: int = 0,
                      preset: str = "tiny", steps: int = 0, batch_size: int = 0, train_gpus: int = 1,
                      shards: int = 1, store: str = SAMPLE_STORE) -> Model:
    return _train(store, city, osm, locations, pairs, holdout, marker_radius_px, seed, preset, steps, batch_size,
                  shards, train_gpus).outputs["onnx_model"]


@dsl.pipeline(name="locgen-generate",
              description="Render a city's map, generate vehicle markers with a model, extract their positions.")
def generation_pipeline(city: str = "kotka", osm: str = SAMPLE_TARGET_OSM, center: str = "60.53,26.95", grid: int = 5,
                        bbox: str = "", model_uri: str = "", provider: str = "auto", batch_size: int = 8,
                        truth: List[str] = [], truth_bbox: str = "", shards: int = 1,
                        store: str = SAMPLE_STORE) -> Dataset:
    return _generate(store, city, osm, bbox, center, grid, model_uri, provider, batch_size, truth, truth_bbox,
                     shards).outputs["points"]


@dsl.pipeline(name="locgen-end-to-end",
              description="Train on one city, then generate for another and for the held-out part of the first, "
                          "scored against its real positions.")
def end_to_end_pipeline(city: str = "helsinki", osm: str = SAMPLE_OSM, locations: List[str] = SAMPLE_LOCATIONS,
                        pairs: int = 400, holdout: str = SAMPLE_HOLDOUT, marker_radius_px: float = 5.0, seed: int = 0,
                        preset: str = "tiny", steps: int = 0, batch_size: int = 0, train_gpus: int = 1,
                        target_city: str = "kotka",
                        target_osm: str = SAMPLE_TARGET_OSM, target_center: str = "60.53,26.95",
                        target_grid: int = 5, target_bbox: str = "", provider: str = "auto", shards: int = 1,
                        store: str = SAMPLE_STORE) -> NamedTuple("Outputs", target_points=Dataset,
                                                                 holdout_points=Dataset):
    model = _train(store, city, osm, locations, pairs, holdout, marker_radius_px, seed, preset, steps, batch_size,
                   shards, train_gpus).outputs["onnx_model"]
    target = _generate(store, target_city, target_osm, target_bbox, target_center, target_grid, "", provider, 8, [],
                       "", shards, onnx_model=model)
    # The held-out box of the training city: ground the model never saw, with its real positions.
    held_out = _generate(store, city, osm, holdout, "", 0, "", provider, 8, locations, holdout, shards,
                         onnx_model=model)
    outputs = NamedTuple("Outputs", target_points=Dataset, holdout_points=Dataset)
    return outputs(target_points=target.outputs["points"], holdout_points=held_out.outputs["points"])


PIPELINES = {"train": training_pipeline, "generate": generation_pipeline, "end-to-end": end_to_end_pipeline}
