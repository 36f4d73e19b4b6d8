"""The pipelines: training (render pairs -> train -> export), generation (render an area -> infer ->
extract, and evaluate where truth is given), and the two chained end to end.

`build_pipelines(registry, gpus)` defines them for the stage images of a registry, with or without
GPU requests: nothing is read from the environment, so building twice with other settings gives two
independent sets (what `locgen compile` does).

The defaults are the bundled sample data (paths relative to a checkout, what `locgen run` uses): on a
cluster, give the OSM data, locations and `store` as s3:// URIs. Every task reads the object-store
settings (AWS_* variables) from the Kubernetes Secret OBJECT_STORE_SECRET. GPU tasks ask for NVIDIA
GPUs (train: `train_gpus` of them in one pod, one DDP process each; infer: one per shard) and tolerate
the usual GPU taint. A GPU count is a text ("1"): KFP's driver takes a parameterised accelerator count
only from a string value. Only the render image's tasks are cached: their output is a pure function of
their inputs; the other tasks write into their run's folder, so a cache hit would leave that folder empty.

The generation pipeline takes its model as an artifact: `model_uri` imported (`dsl.importer`), so that ML Metadata
links the run to the training run whose Model artifact has that URI (a training run's "promote the model" or
"export to ONNX" output; models/current.json names the promoted one as `artifact_uri`). The exported and promoted
Model artifacts hold the ONNX file itself, so the UI's Download gives the model.

Render settings travel by name: a pipeline hands its render parameters to `render_tiles` (and its pair
settings to `render_city`) under the component's own parameter names, so a render setting is wired by
naming it in the pipeline's signature.

Training takes a list of cities (`cities`: items {"city", "osm", "locations", "holdout"}): each city's
pairs are rendered by one task (a ParallelFor over the cities, MAX_PARALLEL at once), and one train task
trains on all of them; the run's model goes under the cities' names joined ("helsinki+prague"). A city's
render is one task, not split in `shards`: kfp.local cannot run a ParallelFor inside another.
End to end, each city with a held-out box is also evaluated there (a ParallelFor over those cities,
one render, inference and extract task each).
"""

from typing import List, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Model, pipeline_channel

from components.core.errors import LocgenError
from components.core.settings import declared
from components.render.job import RenderSettings
from pipeline.components import build_components
from pipeline.images import DEFAULT_REGISTRY, DEFAULT_TAG, image

OBJECT_STORE_SECRET = "locgen-object-store"  # keys named as the variables (manifests/ has the template)
OBJECT_STORE_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
GPU_RESOURCE = "nvidia.com/gpu"
# (cpu request, cpu limit, memory request, memory limit) per task kind
RESOURCES = {"cpu": ("1", "4", "2G", "8G"), "gpu": ("4", "8", "16G", "32G")}
SHM_SIZE = "8Gi"  # /dev/shm of a GPU task (NCCL between DDP processes; Docker's default 64 MB is too small)
MAX_PARALLEL = 8  # tasks a ParallelFor runs at once (cities, shards), unless compiled with another cap
# Every task reads or writes the object store, and render may call Overpass or GBFS feeds: a lost
# connection or a pre-empted node is retried (train resumes its checkpoint, the others publish atomically).
RETRY = {"num_retries": 3, "backoff_duration": "60s", "backoff_factor": 2.0, "backoff_max_duration": "3600s"}
# Each component's name in the Kubeflow UI, and its pod's deadline in seconds (a task that hangs fails).
TASKS = {"shard_indices": ("shards", 600), "render_tiles": ("render tiles", 4 * 3600),
         "render_city": ("render training pairs", 4 * 3600),
         "held_out_cities": ("cities with a held-out box", 600), "city_fields": ("city fields", 600),
         "collect_tiles": ("collect the tile set", 3600), "train_pod_gpus": ("GPUs of the train task", 600),
         "train_generator": ("train the generator", 72 * 3600),
         "export_onnx": ("export to ONNX", 2 * 3600), "generate_tiles": ("generate markers", 6 * 3600),
         "extract_points": ("extract and score the points", 2 * 3600),
         "decide_promotion": ("compare with the current model", 2 * 3600), "promote_model": ("promote the model", 600)}

SAMPLE_OSM = "data/osm/helsinki-center.osm.pbf"
SAMPLE_TARGET_OSM = "data/osm/kotka-karhula.osm.pbf"
SAMPLE_LOCATIONS = ["osm:amenity=bicycle_rental,amenity=bicycle_parking"]
SAMPLE_HOLDOUT = "24.9351,60.1641,24.9535,60.1680"  # central Helsinki kept out of training, to evaluate on
SAMPLE_CITY = {"city": "helsinki", "osm": SAMPLE_OSM, "locations": SAMPLE_LOCATIONS, "holdout": SAMPLE_HOLDOUT}
SAMPLE_STORE = "out/pipeline"
SAMPLE_MODEL = "components/pretrained/tiny-helsinki.onnx"  # the bundled model, for generation from a checkout
IMPORTER_NAME = "the model"  # the generation pipeline's importer task, in the Kubeflow UI
INFER_BATCH_SIZE = 8  # tiles per inference run where a pipeline does not ask (GenerateSettings' default)
RUN_ID = dsl.PIPELINE_JOB_ID_PLACEHOLDER
NO_AREA = {"bbox": "", "center": "", "grid": 0}
NOT_GIVEN = {"Integer": 0, "Float": 0.0, "String": "", "typing.List[str]": []}  # None, as pipeline values


class _Tasks:
    """The task groups the pipelines are made of, on one registry's images, with or without GPUs."""

    def __init__(self, registry: str, tag: str, gpus: bool, gpu_node_selector: dict[str, str], max_parallel: int,
                 retries: bool):
        self.components = build_components(registry, tag)
        self.retries = retries
        self.train_job = _train_job(image("train", registry, tag), gpus, gpu_node_selector)
        self.gpus = gpus
        self.gpu_node_selector = gpu_node_selector
        self.max_parallel = max_parallel

    def on_cluster(self, task: dsl.PipelineTask, gpus=None, cache: bool = False) -> dsl.PipelineTask:
        """Resources, the object-store Secret, its name in the UI, retries and a deadline, and for GPU tasks
        (gpus: a count or a pipeline parameter) the accelerator, its toleration, the node selector and a
        /dev/shm in memory, unless built for a cluster without GPUs."""
        gpu = gpus is not None and self.gpus
        cpu_request, cpu_limit, memory_request, memory_limit = RESOURCES["gpu" if gpu else "cpu"]
        task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
        task.set_memory_request(memory_request).set_memory_limit(memory_limit)
        task.set_caching_options(cache)
        display_name, deadline_s = TASKS[task.component_spec.name.replace("-", "_")]
        task.set_display_name(display_name)
        if self.retries:
            task.set_retry(**RETRY)
        kubernetes.set_timeout(task, deadline_s)
        kubernetes.use_secret_as_env(task, secret_name=OBJECT_STORE_SECRET,
                                     secret_key_to_env={name: name for name in OBJECT_STORE_VARIABLES})
        if gpu:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
            kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
            kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                       size_limit=SHM_SIZE)
            for key, value in self.gpu_node_selector.items():
                kubernetes.add_node_selector(task, key, value)
        return task

    def gpu_count(self, gpus):
        """What a GPU task is told it was given (a text, as its accelerator count): none on a cluster without GPUs."""
        return gpus if self.gpus else "0"

    def rendered(self, store: str, shards: int, **render) -> dsl.PipelineTask:
        """Render a tile set (`render`: render_tiles' parameters; those left out at RenderSettings'
        defaults) in `shards` parallel tasks and collect it; returns the collect task."""
        c = self.components
        render = {**_render_defaults(c.render_tiles), **render}
        indices = self.on_cluster(c.shard_indices(shards=shards), cache=True)
        with dsl.ParallelFor(items=indices.output, parallelism=self.max_parallel) as shard:
            part = self.on_cluster(c.render_tiles(store=store, shard=shard, shards=shards, **render), cache=True)
        return self.on_cluster(c.collect_tiles(parts=dsl.Collected(part.outputs["tiles"])), cache=True)

    def train(self, store: str, cities: List[dict], preset: str, steps: int, train_batch_size: int, init_from: str,
              train_gpus: str, train_nodes: int, **pair_settings) -> dsl.PipelineTask:
        """The training tasks: each city's pairs rendered by one task (`pair_settings`: render_city's
        parameters), all of them trained on together (in the train task's pod, or with train_nodes > 1 in a
        distributed job that it launches, `train_gpus` GPUs a node), exported, and promoted to the cities'
        current model when it validates better than that one; returns the export task, whose onnx_model is the
        trained model."""
        c = self.components
        with dsl.ParallelFor(items=cities, parallelism=self.max_parallel) as city:
            pairs = self.on_cluster(c.render_city(store=store, city=city, **pair_settings), cache=True)
        training_tiles = dsl.Collected(pairs.outputs["tiles"])
        training = c.train_generator(store=store, run_id=RUN_ID, preset=preset, steps=steps,
                                     batch_size=train_batch_size, init_from=init_from, gpus=self.gpu_count(train_gpus),
                                     nodes=train_nodes, job=self.train_job, training_tiles=training_tiles)
        pod_gpus = None
        if self.gpus:  # a train task that launches a distributed job only waits for it: its pod needs no GPU
            placement = self.on_cluster(c.train_pod_gpus(gpus=train_gpus, nodes=train_nodes), cache=True)
            # A count from a task's output is no dependency to the compiler: without after(), the backend
            # (and kfp.local) could start training before the count exists.
            training.after(placement)
            pod_gpus = placement.output
        self.on_cluster(training, gpus=pod_gpus)
        generator = training.outputs["generator"]
        export = self.on_cluster(c.export_onnx(store=store, run_id=RUN_ID, generator=generator,
                                               training_tiles=dsl.Collected(pairs.outputs["tiles"])))
        # The run's model replaces the cities' current one only where it validates better on the same tiles.
        decision = self.on_cluster(c.decide_promotion(store=store, run_id=RUN_ID, generator=generator,
                                                      training_tiles=dsl.Collected(pairs.outputs["tiles"])))
        with dsl.If(decision.outputs["Output"] == True, name="better than the current model"):  # noqa: E712
            self.on_cluster(c.promote_model(store=store, run_id=RUN_ID, onnx_model=export.outputs["onnx_model"],
                                            generator=generator))
        return export

    @staticmethod
    def imported_model(model_uri: str) -> dsl.PipelineTask:
        """The model at `model_uri` as an artifact of the run: ML Metadata finds the artifact of that URI that a
        training run made (reimport=False), so the generation run's lineage leads to it."""
        importer = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
        return importer.set_display_name(IMPORTER_NAME)

    def generate(self, store: str, shards: int, city: str, osm: str, onnx_model, provider: str,
                 infer_batch_size: int, count: int, truth: List[str], truth_bbox: str, class_shares: str,
                 **area) -> dsl.PipelineTask:
        """The generation tasks for one area (`area`: bbox, center, grid) with the model artifact `onnx_model`,
        rendered and translated in `shards` parallel tasks each; returns the extract task."""
        c = self.components
        plain = self.rendered(store, shards, city=city, osm=osm, **area)
        indices = self.on_cluster(c.shard_indices(shards=shards), cache=True)
        with dsl.ParallelFor(items=indices.output, parallelism=self.max_parallel) as shard:
            part = self.on_cluster(c.generate_tiles(store=store, run_id=RUN_ID, provider=provider,
                                                    batch_size=infer_batch_size, shard=shard, shards=shards,
                                                    gpus=self.gpu_count("1"), tiles=plain.outputs["tiles"],
                                                    onnx_model=onnx_model), gpus="1")
        generated = self.on_cluster(c.collect_tiles(parts=dsl.Collected(part.outputs["generated"])))
        return self.on_cluster(c.extract_points(count=count, truth=truth, truth_bbox=truth_bbox,
                                                class_shares=class_shares, osm=osm,
                                                generated=generated.outputs["tiles"]))

    def held_out(self, store: str, cities: List[dict], provider: str, class_shares: str,
                 onnx_model) -> dsl.PipelineTask:
        """The held-out box of each city that has one: rendered, translated with `onnx_model` and
        extracted by one task each (a ParallelFor over those cities), scored against the city's real
        positions; returns the extract task (inside the loop)."""
        c = self.components
        held_out = self.on_cluster(c.held_out_cities(cities=cities), cache=True)
        with dsl.ParallelFor(items=held_out.output, parallelism=self.max_parallel) as city:
            fields = self.on_cluster(c.city_fields(city=city), cache=True)
            render = {**_render_defaults(c.render_tiles), **NO_AREA, "city": fields.outputs["city"],
                      "osm": fields.outputs["osm"], "bbox": fields.outputs["holdout"]}
            plain = self.on_cluster(c.render_tiles(store=store, shard=0, shards=1, **render), cache=True)
            generated = self.on_cluster(c.generate_tiles(store=store, run_id=RUN_ID, provider=provider,
                                                         batch_size=INFER_BATCH_SIZE, shard=0, shards=1,
                                                         gpus=self.gpu_count("1"), tiles=plain.outputs["tiles"],
                                                         onnx_model=onnx_model), gpus="1")
            points = self.on_cluster(c.extract_points(count=0, truth=fields.outputs["locations"],
                                                      truth_bbox=fields.outputs["holdout"], class_shares=class_shares,
                                                      osm=fields.outputs["osm"],
                                                      generated=generated.outputs["generated"]))
        return points


def _train_job(train_image: str, gpus: bool, gpu_node_selector: dict[str, str]) -> dict:
    """The pods of a distributed training job (train_nodes > 1), as a train task's own pod would be: its image,
    resources, object-store Secret and GPU placement (pipeline.trainjob.DistributedTraining's fields)."""
    cpu_request, cpu_limit, memory_request, memory_limit = RESOURCES["gpu" if gpus else "cpu"]
    return {"image": train_image, "cpu_request": cpu_request, "cpu_limit": cpu_limit, "memory_request": memory_request,
            "memory_limit": memory_limit, "secret": OBJECT_STORE_SECRET,
            "secret_variables": list(OBJECT_STORE_VARIABLES), "shm_size": SHM_SIZE,
            # built for a cluster without GPUs: no GPU resource, so a job asking for GPUs is refused
            "gpu_resource": GPU_RESOURCE if gpus else "", "gpu_node_selector": dict(gpu_node_selector) if gpus else {}}


def _render_defaults(render_tiles) -> dict:
    """render_tiles' settings at RenderSettings' defaults, as pipeline values: what a render that does
    not name a setting (a plain render names no training pair setting) gives it."""
    defaults = {item.name: item.default for item in declared(RenderSettings) if item.cli}
    return {name: NOT_GIVEN[spec.type] if defaults[name] is None else defaults[name]
            for name, spec in render_tiles.component_spec.inputs.items() if name in defaults}


def _parameters(scope: dict) -> dict:
    """A pipeline function's parameters among its `locals()`: the channels KFP made for them (not the
    builder's names that the function's body closes over)."""
    return {name: value for name, value in scope.items() if isinstance(value, pipeline_channel.PipelineChannel)}


def build_pipelines(registry: str = DEFAULT_REGISTRY, gpus: bool = True, gpu_node_selector: dict | None = None,
                    max_parallel: int = MAX_PARALLEL, tag: str = DEFAULT_TAG, retries: bool = True) -> dict:
    """The three pipelines, by the name `locgen compile` and `locgen submit` use, on the stage images
    of `registry` with `tag`; without `gpus`, no task asks for a GPU (train and infer then run on the CPU); GPU
    tasks go to nodes with the labels of `gpu_node_selector`; a ParallelFor runs `max_parallel` tasks at once.
    Without `retries` (a run on this machine, where nothing is pre-empted), a failed task fails the run at once
    instead of being tried again 3 times over 7 minutes."""
    if max_parallel < 1:
        raise LocgenError(f"--max-parallel {max_parallel}: give 1 or more tasks at once")
    tasks = _Tasks(registry, tag, gpus, gpu_node_selector or {}, max_parallel, retries)

    @dsl.pipeline(name="locgen-train",
                  description="Render training pairs for each city, train FastCUT on all of them, export to ONNX.")
    def training_pipeline(cities: List[dict] = [SAMPLE_CITY], pairs: int = 400, sampling: str = "points",
                          empty_share: float = 0.1, marker_radius_px: float = 5.0, seed: int = 0, preset: str = "tiny",
                          steps: int = 0, train_batch_size: int = 0, init_from: str = "", train_gpus: str = "1",
                          train_nodes: int = 1, store: str = SAMPLE_STORE) -> Model:
        return tasks.train(**_parameters(locals())).outputs["onnx_model"]

    @dsl.pipeline(name="locgen-generate",
                  description="Render a city's map, generate vehicle markers with a model, extract their positions.")
    def generation_pipeline(city: str = "kotka", osm: str = SAMPLE_TARGET_OSM, center: str = "60.53,26.95",
                            grid: int = 5, bbox: str = "", model_uri: str = SAMPLE_MODEL, provider: str = "auto",
                            infer_batch_size: int = INFER_BATCH_SIZE, count: int = 0, truth: List[str] = [],
                            truth_bbox: str = "", class_shares: str = "", shards: int = 1,
                            store: str = SAMPLE_STORE) -> Dataset:
        model = tasks.imported_model(model_uri).output
        return tasks.generate(store, shards, city, osm, model, provider, infer_batch_size, count, truth,
                              truth_bbox, class_shares, bbox=bbox, center=center, grid=grid).outputs["points"]

    @dsl.pipeline(name="locgen-end-to-end",
                  description="Train on the cities, then generate for another town and for the held-out box of "
                              "each training city, scored against its real positions.")
    def end_to_end_pipeline(cities: List[dict] = [SAMPLE_CITY], pairs: int = 400, sampling: str = "points",
                            empty_share: float = 0.1, marker_radius_px: float = 5.0, seed: int = 0,
                            preset: str = "tiny", steps: int = 0, train_batch_size: int = 0, init_from: str = "",
                            train_gpus: str = "1", train_nodes: int = 1, target_city: str = "kotka",
                            target_osm: str = SAMPLE_TARGET_OSM,
                            target_center: str = "60.53,26.95", target_grid: int = 5, target_bbox: str = "",
                            target_count: int = 0, class_shares: str = "", provider: str = "auto", shards: int = 1,
                            store: str = SAMPLE_STORE) -> NamedTuple("Outputs", target_points=Dataset,
                                                                     holdout_points=List[Dataset]):
        training = {name: value for name, value in _parameters(locals()).items()
                    if not name.startswith("target_") and name not in ("provider", "class_shares", "shards")}
        model = tasks.train(**training).outputs["onnx_model"]
        target = tasks.generate(store, shards, target_city, target_osm, model, provider, INFER_BATCH_SIZE,
                                target_count, [], "", "", bbox=target_bbox, center=target_center, grid=target_grid)
        # The held-out box of each training city: ground the model never saw, with its real positions.
        held_out = tasks.held_out(store, cities, provider, class_shares, onnx_model=model)
        outputs = NamedTuple("Outputs", target_points=Dataset, holdout_points=List[Dataset])
        return outputs(target_points=target.outputs["points"],
                       holdout_points=dsl.Collected(held_out.outputs["points"]))

    return {"train": training_pipeline, "generate": generation_pipeline, "end-to-end": end_to_end_pipeline}
