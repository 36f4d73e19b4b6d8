"""Training settings: plain values in one place, and the two presets.

`fastcut` is the paper's FastCUT at 256 px, as the official repository sets it (`--CUT_mode FastCUT`:
lambda_NCE 10, no identity NCE, flip-equivariance, 150 epochs constant then 50 decaying: the same
3:1 split here, in steps). `tiny` is a small network at 128 px crops that trains thousands of
steps in minutes on 2 CPU cores, for the demo, CI and the bundled generator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from components.core.errors import LocgenError
from components.core.pngmeta import MAX_TILE_PX, MIN_TILE_PX
from components.core.settings import SEED, Within, check_number, setting
from components.core.storage import default_cache_dir

SHARE = Within(0, 1, above=True, below=True)
COUNT = Within(1)
# The numbers each training value takes (TrainConfig.__post_init__); flip_equivariance and the speed switches are
# booleans.
TRAIN_VALUES = {
    "ngf": COUNT, "n_blocks": Within(0), "ndf": COUNT, "d_layers": COUNT, "nce_layers": Within(0),
    "num_patches": COUNT, "nce_channels": COUNT, "nce_temperature": Within(0, above=True), "lambda_nce": Within(0),
    "lambda_gan": Within(0), "lr": Within(0, 1, above=True), "beta1": Within(0, 1, below=True),
    "beta2": Within(0, 1, below=True), "batch_size": COUNT, "steps": COUNT, "decay_share": Within(0, 1),
    "crop_px": Within(MIN_TILE_PX, MAX_TILE_PX), "seed": SEED, "ema_decay": Within(0, 1, below=True),
    "log_every": COUNT, "sample_every": COUNT, "checkpoint_every": COUNT, "validation_share": SHARE,
}
CROP_MULTIPLE_PX = 4  # the generator halves a crop twice and doubles it back: a crop not of 4s changes size


@dataclass(frozen=True)
class TrainConfig:
    # networks
    ngf: int = 64
    n_blocks: int = 9
    ndf: int = 64
    d_layers: int = 3
    # PatchNCE
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)
    num_patches: int = 256
    nce_channels: int = 256
    nce_temperature: float = 0.07
    lambda_nce: float = 10.0
    lambda_gan: float = 1.0
    flip_equivariance: bool = True
    # optimisation
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 1
    steps: int = 400_000
    decay_share: float = 0.25  # the last quarter of the steps decays the learning rate linearly to 0
    crop_px: int = 256  # training crops; tiles larger than this are cropped at random
    seed: int = 0
    # > 0: validate, sample and export an exponential moving average of G's weights (each step keeps this
    # share of the average), steadier than the last step's G whose markers come and go; 0: the official
    # code's G as it stands
    ema_decay: float = 0.0
    # watching it
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 1000
    validation_share: float = 0.05  # b tiles held out to count the dots the generator paints
    # speed (CUDA only; ignored on CPU)
    bf16: bool = True
    channels_last: bool = True
    fused_adam: bool = True
    compile: bool = False
    cudnn_benchmark: bool = True  # time cuDNN's algorithms once per shape: the crops never change size

    def __post_init__(self) -> None:
        """One line for a value no training could run with: from a preset, --steps, --set or a pipeline."""
        for name, within in TRAIN_VALUES.items():
            check_number(f"training setting {name}", getattr(self, name), within,
                         whole=isinstance(getattr(TrainConfig, name, 0.0), (int, tuple)))
        if self.crop_px % CROP_MULTIPLE_PX:
            raise LocgenError(f"training setting crop_px {self.crop_px}: give a multiple of {CROP_MULTIPLE_PX} pixels "
                              "(the generator halves a crop twice)")

    def override(self, **values) -> TrainConfig:
        """A copy with some values changed; unknown names are an error, not silently ignored."""
        known = {field.name for field in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return replace(self, **values)


PRESETS: dict[str, TrainConfig] = {
    "fastcut": TrainConfig(),
    # ~4 steps/s on 2 CPU cores: 2,000 steps in about 9 minutes. lambda_nce 1 (CUT's weight, not
    # FastCUT's 10): with 10, this 16-channel generator painted no marker in 3,500 steps, since
    # PatchNCE outweighed the discriminator's call for dots; with 1 the dots come within 1,250.
    "tiny": TrainConfig(ngf=16, n_blocks=5, ndf=16, num_patches=64, nce_channels=64, lambda_nce=1.0, batch_size=2,
                        steps=2000, crop_px=128, log_every=20, sample_every=250, checkpoint_every=250),
}


def preset_config(preset: str, steps: int | None = None, batch_size: int | None = None, **values) -> TrainConfig:
    """A preset with some values changed (None keeps the preset's steps or batch size): what the
    command line's --preset, --steps, --batch-size and --set and the pipeline's parameters make."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: unknown; give one of {', '.join(sorted(PRESETS))}")
    values.update({name: value for name, value in (("steps", steps), ("batch_size", batch_size)) if value is not None})
    return PRESETS[preset].override(**values)


def _device_name(text: str, what: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", text):
        raise LocgenError(f"{what} {text}: give auto (CUDA when there is one), cpu, cuda or cuda:N")
    return text


@dataclass
class TrainSettings:
    """Everything `locgen train` takes besides the training values (`TrainConfig`), in one place
    (components.core.settings)."""

    data: list[str] = setting(help="tile set from locgen render --pairs (repeatable: one a city, trained on together)",
                              metavar="URI")
    out: str = setting(help="checkpoints, generator.pt, metrics, samples", metavar="URI", output=False)
    config: TrainConfig = setting(help="the training values", cli=False)
    resume: bool = setting(False, help="continue from OUT/checkpoints/last.pt", output=False)
    resume_if_any: bool = setting(
        False, help="continue from OUT/checkpoints/last.pt where there is one, else start a new run (from --init-from "
                    "where given): what a retried or restarted task runs", output=False)
    overwrite: bool = setting(False, help="start afresh in an --out that holds a run: its checkpoints, generator "
                                          "and metrics are replaced", output=False)
    init_from: str | None = setting(
        None, help="fine-tune: start the networks from this generator.pt or checkpoint (local or s3://, or "
                   "'bundled' for the bundled generator); the steps, optimisers and schedulers start anew",
        metavar="MODEL")
    device: str = setting("auto", help="auto (CUDA when there is one), cpu, cuda or cuda:N", output=False,
                          parse=_device_name)
    progress: bool = setting(True, help="a progress bar on stderr", cli=False, output=False)
    # stop (with a checkpoint) at this step, to resume later; None: config.steps
    stop_at: int | None = setting(None, help="stop at this step", cli=False, output=False)
    cache_dir: Path | None = setting(
        help="where an s3:// tile set's tiles are kept (default $LOCGEN_CACHE or ~/.cache/locgen)",
        default_factory=default_cache_dir, output=False)  # None: never
