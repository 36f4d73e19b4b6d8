"""What `locgen generate` takes, apart from the code that runs it: the CLI reads its defaults here
without importing onnxruntime, which only the inference environments install."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from components.core.storage import default_cache_dir

AUTO_ORDER = ("tensorrt", "cuda", "cpu")  # what --provider auto tries, in this order


@dataclass
class GenerateSettings:
    """Everything `locgen generate` takes, with its defaults, in one place."""

    tiles: str  # a tile set with plain (domain b) tiles, local or s3://
    out: str  # the generated tile set, local or s3://
    model: str | None = None  # MODEL.onnx of locgen export, local or s3://; None: the bundled model
    provider: str = "auto"  # auto or one of AUTO_ORDER
    batch_size: int = 8
    cache_dir: Path = field(default_factory=default_cache_dir)  # downloaded models, TensorRT engines
    progress: bool = True
    shard: int = 0  # with shards > 1: translate every shards-th plain tile from this one on, publish a part
    shards: int = 1
