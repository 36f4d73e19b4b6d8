"""What `locgen generate` takes, apart from the code that runs it: the CLI reads its defaults here
without importing onnxruntime, which only the inference environments install."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.core.settings import Checked, Within, setting
from components.core.storage import default_cache_dir

AUTO_ORDER = ("tensorrt", "cuda", "cpu")  # what --provider auto tries, in this order


@dataclass
class GenerateSettings(Checked):
    """Everything `locgen generate` takes, with its defaults and help, in one place (components.core.settings)."""

    tiles: str = setting(help="tile set with plain tiles (locgen render)", metavar="URI")
    out: str = setting(help="the generated tile set, local or s3://", metavar="URI", output=False)
    model: str | None = setting(None, help="MODEL.onnx of locgen export, local or s3:// (default: the bundled model)",
                                metavar="URI.onnx")
    provider: str = setting("auto", help="auto: TensorRT, else CUDA, else CPU (%(default)s)",
                            choices=("auto", *AUTO_ORDER))
    batch_size: int = setting(8, help="tiles per run (%(default)s)", output=False, within=Within(1))
    overwrite: bool = setting(False, help="replace another tile set in --out (of other tiles or another model)",
                              output=False)
    cache_dir: Path = setting(help="downloaded models and TensorRT engines (default $LOCGEN_CACHE or ~/.cache/locgen)",
                              default_factory=default_cache_dir, output=False)
    progress: bool = setting(True, help="a progress bar on stderr", cli=False, output=False)
    # with shards > 1: translate every shards-th plain tile from this one on, and publish a part
    shard: int = setting(0, help="this shard's index", cli=False, output=False, within=Within(0))
    shards: int = setting(1, help="how many shards translate the tile set", cli=False, output=False,
                         within=Within(1))
    # a pipeline task given a GPU: running on the CPU instead is an error, before any tile
    require_gpu: bool = setting(False, help="fail unless the model runs on a GPU", cli=False, output=False)
