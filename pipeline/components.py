"""The KFP v2 components: lightweight Python components on each stage's own image, with thin bodies.

Each image has the project and kfp installed, so nothing is installed at run time
(`install_kfp_package=False`): the same components run on a cluster and through
`kfp.local.SubprocessRunner(use_venv=False)`. A body only imports and calls `pipeline.steps`
(KFP ships the function's source alone, so imports live inside it), handing on its parameters by
name: a setting added to a stage's settings and to a component's signature reaches the stage with
no other edit here. The functions below are plain; `build_components` makes them components on the
images of a registry.
"""

from types import SimpleNamespace
from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from pipeline.images import DEFAULT_TAG, image


def shard_indices(shards: int) -> List[int]:
    """0 .. shards - 1: what a ParallelFor over the shards of a tile set runs on."""
    if shards < 1:
        raise ValueError(f"shards {shards}: give 1 or more")
    return list(range(shards))


def render_tiles(store: str, city: str, osm: str, locations: List[str], pairs: int, sampling: str, empty_share: float,
                 bbox: str, center: str, grid: int, holdout: str, marker_radius_px: float, seed: int, shard: int,
                 shards: int, tiles: Output[Dataset], metrics: Output[Metrics]):
    """Render one shard of a tile set: training pairs around the locations (pairs > 0), or the tiles of an area."""
    parameters = dict(locals())  # the parameters above, by name, before anything else is bound here
    from pipeline.steps import render_step

    render_step(**parameters)


def render_city(store: str, city: dict, pairs: int, sampling: str, empty_share: float, marker_radius_px: float,
                seed: int, tiles: Output[Dataset], metrics: Output[Metrics]):
    """Render one city's training pairs (`city`: an item of the pipeline's `cities`) as one task, published
    as a whole tile set."""
    parameters = dict(locals())
    from pipeline.steps import render_city_step

    render_city_step(**parameters)


def held_out_cities(cities: List[dict]) -> List[dict]:
    """The items of `cities` with a held-out box: what the held-out evaluation runs on, one city each."""
    from pipeline.steps import held_out_cities_step

    return held_out_cities_step(cities)


def city_fields(city: dict) -> NamedTuple("CityFields", city=str, osm=str, locations=List[str], holdout=str):
    """An item of `cities` as its fields, for the tasks that take them one by one."""
    from collections import namedtuple

    from pipeline.steps import city_parameters

    fields = city_parameters(city)
    return namedtuple("CityFields", fields)(**fields)


def collect_tiles(parts: Input[List[Dataset]], tiles: Output[Dataset], metrics: Output[Metrics]):
    """Merge the shards of a tile set (rendered or generated) into one, with its lineage."""
    parameters = dict(locals())
    from pipeline.steps import collect_step

    collect_step(**parameters)


def train_pod_gpus(gpus: str, nodes: int) -> str:
    """The GPUs of the train task's own pod: `gpus` when it trains there (nodes 1), none when it launches a job
    on `nodes` nodes and waits for it."""
    return gpus if nodes == 1 else "0"


def train_generator(store: str, run_id: str, preset: str, steps: int, batch_size: int, init_from: str, gpus: str,
                    nodes: int, job: dict, training_tiles: Input[List[Dataset]], generator: Output[Model],
                    metrics: Output[Metrics]):
    """Train FastCUT on the training pairs of every city together, one DDP process per GPU, in this pod or (nodes > 1)
    in a distributed job on that many (resuming the run's checkpoint after a retry)."""
    parameters = dict(locals())
    from pipeline.steps import train_step

    train_step(**parameters)


def export_onnx(store: str, run_id: str, generator: Input[Model], training_tiles: Input[List[Dataset]],
                onnx_model: Output[Model], metrics: Output[Metrics]):
    """Export the generator to ONNX (and its fp16 variant), checked against PyTorch on the first city's training
    tiles."""
    parameters = dict(locals())
    from pipeline.steps import export_step

    export_step(**parameters)


def decide_promotion(store: str, run_id: str, generator: Input[Model], training_tiles: Input[List[Dataset]],
                     metrics: Output[Metrics]) -> bool:
    """Whether the run's model beats the city set's current one on this run's held-out tiles and boxes (True when
    there is none)."""
    parameters = dict(locals())
    from pipeline.steps import decide_promotion_step

    return decide_promotion_step(**parameters)


def promote_model(store: str, run_id: str, onnx_model: Input[Model], generator: Input[Model], model: Output[Model],
                  metrics: Output[Metrics]):
    """Make the run's model the city set's current one ({store}/{cities}/models/current.json)."""
    parameters = dict(locals())
    from pipeline.steps import promote_step

    promote_step(**parameters)


def generate_tiles(store: str, run_id: str, provider: str, batch_size: int, shard: int, shards: int, gpus: str,
                   tiles: Input[Dataset], onnx_model: Input[Model], generated: Output[Dataset],
                   metrics: Output[Metrics]):
    """Run the generator (an ONNX model artifact: exported by this run, or imported) on one shard of the plain tiles."""
    parameters = dict(locals())
    from pipeline.steps import generate_step

    generate_step(**parameters)


def extract_points(count: int, truth: List[str], truth_bbox: str, class_shares: str, osm: str,
                   generated: Input[Dataset], points: Output[Dataset], preview: Output[HTML], summary: Output[Markdown],
                   metrics: Output[Metrics]):
    """Turn the generated dots into points (CSV, GeoJSON, preview; with count, the best that many); with
    truth, evaluate them."""
    parameters = dict(locals())
    from pipeline.steps import extract_step

    extract_step(**parameters)


# Each function above, with the stage whose image runs it.
STAGE_OF = {shard_indices: "render", render_tiles: "render", render_city: "render", held_out_cities: "render",
            city_fields: "render", collect_tiles: "render", train_pod_gpus: "render", train_generator: "train",
            export_onnx: "export", decide_promotion: "export", promote_model: "render", generate_tiles: "infer",
            extract_points: "extract"}


def build_components(registry: str, tag: str = DEFAULT_TAG) -> SimpleNamespace:
    """The components, by function name, on the stage images of `registry` with `tag`."""
    return SimpleNamespace(**{
        function.__name__: dsl.component(function, base_image=image(stage, registry, tag), install_kfp_package=False)
        for function, stage in STAGE_OF.items()})
