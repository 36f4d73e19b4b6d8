"""Generators side by side on the training cities' held-out boxes: the validation training chooses
checkpoints by (components.train.validation), on the same boxes for every model, so runs trained on
different cities compare. This, not the quality benchmark's held-out cities, chooses the bundled model.

Usage: python benchmarks/bench_validation.py --data TILESET [--data ...] --model GENERATOR.pt|bundled [--model ...]
Prints one JSON document: per model, its place score and each box's figures.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from components.train.data import load_tile_sets
from components.train.generator_file import load_generator
from components.train.validation import place_scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, help="a training tile set with a held-out box")
    parser.add_argument("--model", action="append", required=True, help="a generator.pt, or 'bundled'")
    args = parser.parse_args()
    data = load_tile_sets(args.data, validation_share=0.0)
    models = {}
    for uri in args.model:
        generator, metadata = load_generator(None if uri == "bundled" else uri)
        models[uri] = {"cities": metadata.get("cities"), "chosen_step": metadata["validation"]["step"],
                       **place_scores(generator, data.held_out_boxes, data.marker_radius_px, torch.device("cpu"))}
    print(json.dumps({"benchmark": "validation", "boxes": [box.city for box in data.held_out_boxes],
                      "models": models}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
