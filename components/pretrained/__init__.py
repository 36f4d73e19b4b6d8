"""The bundled pretrained generator: what generation uses when no model is given.

A `tiny` FastCUT generator that `locgen train` trained on the bundled Helsinki sample data. How it
was made (the exact commands, the sha256 of its tile set's manifest) and how it scores are in the
README.md beside this file; its weights are derived from OpenStreetMap data (ODbL).
"""

from pathlib import Path

BUNDLED_GENERATOR = Path(__file__).with_name("tiny-helsinki.pt")
# The same generator exported by `locgen export` (with its fp16 variant and parity report beside it).
BUNDLED_MODEL = Path(__file__).with_name("tiny-helsinki.onnx")
