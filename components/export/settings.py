"""What `locgen export` takes, apart from the code that runs it: the command line reads it without
importing torch and onnx, which only the export image installs."""

from __future__ import annotations

from dataclasses import dataclass

from components.core.settings import SEED, Checked, setting


@dataclass
class ExportSettings(Checked):
    """Everything `locgen export` takes, with its defaults and help, in one place (components.core.settings)."""

    out: str = setting(help="the model to write, local or s3://", metavar="URI.onnx", output=False)
    checkpoint: str | None = setting(
        None, help="generator.pt of locgen train, local or s3:// (default: the bundled generator)", metavar="URI")
    tiles: str | None = setting(
        None, help="tile set whose plain tiles the parity check runs on (default: the training tile set)",
        metavar="URI")
    seed: int = setting(0, help="random seed of the parity check's random inputs (%(default)s)", within=SEED)
