"""The KFP v2 components: lightweight Python components on each stage's own image, with thin bodies.

Each image has the project and kfp installed, so nothing is installed at run time
(`install_kfp_package=False`): the same components run on a cluster and through
`kfp.local.SubprocessRunner(use_venv=False)`. A body only imports and calls `pipeline.steps`
(KFP ships the function's source alone, so imports live inside it).
"""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from pipeline.images import image


@dsl.component(base_image=image("render"), install_kfp_package=False)
def shard_indices(shards: int) -> List[int]:
    """0 .. shards - 1: what a ParallelFor over the shards of a tile set runs on."""
    if shards < 1:
        raise ValueError(f"shards {shards}: give 1 or more")
    return list(range(shards))


@dsl.component(base_image=image("render"), install_kfp_package=False)
def render_tiles(store: str, city: str, osm: str, locations: List[str], pairs: int, bbox: str, center: str, grid: int,
                 holdout: str, marker_radius_px: float, seed: int, shard: int, shards: int, tiles: Output[Dataset],
                 metrics: Output[Metrics]):
    """Render one shard of a tile set: training pairs around the locations (pairs > 0), or the tiles of an area."""
    from pipeline.steps import render_step

    render_step(store=store, city=city, osm=osm, locations=locations, pairs=pairs, bbox=bbox, center=center,
                grid=grid, holdout=holdout, marker_radius_px=marker_radius_px, seed=seed, shard=shard, shards=shards,
                tiles=tiles, metrics=metrics)


@dsl.component(base_image=image("render"), install_kfp_package=False)
def collect_tiles(parts: Input[List[Dataset]], tiles: Output[Dataset], metrics: Output[Metrics]):
    """Merge the shards of a tile set (rendered or generated) into one, with its lineage."""
    from pipeline.steps import collect_step

    collect_step(parts=parts, tiles=tiles, metrics=metrics)


@dsl.component(base_image=image("train"), install_kfp_package=False)
def train_generator(store: str, run_id: str, preset: str, steps: int, batch_size: int, gpus: int,
                    training_tiles: Input[Dataset], generator: Output[Model], metrics: Output[Metrics]):
    """Train FastCUT on the training pairs, one DDP process per GPU (resuming the run's checkpoint after a retry)."""
    from pipeline.steps import train_step

    train_step(store=store, run_id=run_id, preset=preset, steps=steps, batch_size=batch_size, gpus=gpus,
               training_tiles=training_tiles, model=generator, metrics=metrics)


@dsl.component(base_image=image("export"), install_kfp_package=False)
def export_onnx(store: str, run_id: str, generator: Input[Model], training_tiles: Input[Dataset],
                onnx_model: Output[Model], metrics: Output[Metrics]):
    """Export the generator to ONNX (and its fp16 variant), checked against PyTorch on the training tiles."""
    from pipeline.steps import export_step

    export_step(store=store, run_id=run_id, generator=generator, training_tiles=training_tiles,
                onnx_model=onnx_model, metrics=metrics)


@dsl.component(base_image=image("infer"), install_kfp_package=False)
def generate_tiles(store: str, run_id: str, model_uri: str, provider: str, batch_size: int, shard: int, shards: int,
                   tiles: Input[Dataset], generated: Output[Dataset], metrics: Output[Metrics],
                   onnx_model: Optional[Input[Model]] = None):
    """Run the generator (the artifact, else model_uri, else the bundled model) on one shard of the plain tiles."""
    from pipeline.steps import generate_step

    generate_step(store=store, run_id=run_id, model_uri=model_uri, provider=provider, batch_size=batch_size,
                  shard=shard, shards=shards, onnx_model=onnx_model, tiles=tiles, generated=generated,
                  metrics=metrics)


@dsl.component(base_image=image("extract"), install_kfp_package=False)
def extract_points(truth: List[str], truth_bbox: str, osm: str, generated: Input[Dataset], points: Output[Dataset],
                   preview: Output[HTML], summary: Output[Markdown], metrics: Output[Metrics]):
    """Turn the generated dots into points (CSV, GeoJSON, preview); with truth, evaluate them."""
    from pipeline.steps import extract_step

    extract_step(truth=truth, truth_bbox=truth_bbox, osm=osm, generated=generated, points=points, preview=preview,
                 summary=summary, metrics=metrics)
