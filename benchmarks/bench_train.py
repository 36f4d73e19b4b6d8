"""Training speed: steps (and images) per second of real FastCUT steps on real training tiles.

- `--device cpu` (default): the `tiny` preset, as CI and the demo run it.
- `--device cuda`: 256 px images per second for the official code's way (batch 1, fp32, eager)
  against ours (bf16 autocast, channels_last, fused Adam, torch.compile) at batch 8 and 32, in one
  run, with the FLOPs of a step counted by torch's FlopCounterMode and the share of the GPU's bf16
  peak (`--peak-tflops`, 989 for an H100/H200 SXM, dense). Goal: 10x the batch-1 fp32 figure.

The tiles: training pairs of central Helsinki rendered by `locgen render` into a temporary folder.
Prints one JSON document. Usage: python benchmarks/bench_train.py [--device cpu|cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from components.render.job import RenderSettings, render
from components.train.config import PRESETS, TrainConfig
from components.train.data import load_tiles
from components.train.train import Models, _optimisers, _runtime, _step

ROOT = Path(__file__).resolve().parents[1]
HELSINKI_PBF = ROOT / "data" / "osm" / "helsinki-center.osm.pbf"
WARM_UP_STEPS = 3  # the first steps pay for allocation and, with torch.compile, for compiling


def training_tiles(folder: str) -> str:
    out = f"{folder}/pairs"
    render(RenderSettings(osm=[str(HELSINKI_PBF)], out=out, pairs=64, city="helsinki", progress=False,
                          locations=["osm:amenity=bicycle_rental,amenity=bicycle_parking"]))
    return out


def steps_per_second(data, config: TrainConfig, device: torch.device, steps: int) -> dict:
    """Real training steps, timed after a warm-up; FLOPs of one step counted on the device."""
    torch.manual_seed(0)
    models = Models(config).to(device)
    runtime = _runtime(models, config, device)
    optimisers = _optimisers(models, config, device)
    for step in range(WARM_UP_STEPS):
        _step(models, runtime, optimisers, data, config, step)
    with FlopCounterMode(display=False) as counter:
        _step(models, runtime, optimisers, data, config, WARM_UP_STEPS)
    _synchronise(device)
    started = time.perf_counter()
    for step in range(WARM_UP_STEPS + 1, WARM_UP_STEPS + 1 + steps):
        _step(models, runtime, optimisers, data, config, step)
    _synchronise(device)
    seconds = time.perf_counter() - started
    return {"batch_size": config.batch_size, "crop_px": config.crop_px, "steps_per_s": round(steps / seconds, 3),
            "images_per_s": round(steps * config.batch_size / seconds, 2),
            "tflop_per_step": round(counter.get_total_flops() / 1e12, 4),
            "achieved_tflops": round(counter.get_total_flops() * steps / seconds / 1e12, 2)}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (cpu 30, cuda 50)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    args = parser.parse_args()
    device = torch.device(args.device)
    results: dict = {"machine": f"{platform.machine()}, torch {torch.__version__}, "
                                f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}"}
    with tempfile.TemporaryDirectory() as folder:
        data = load_tiles(training_tiles(folder), validation_share=0.0)
        if device.type == "cpu":
            results["tiny"] = steps_per_second(data, PRESETS["tiny"], device, args.steps or 30)
        else:
            official = PRESETS["fastcut"].override(batch_size=1, bf16=False, channels_last=False, fused_adam=False,
                                                   compile=False)
            results["batch1_fp32_eager"] = steps_per_second(data, official, device, args.steps or 50)
            for batch_size in (8, 32):
                ours = PRESETS["fastcut"].override(batch_size=batch_size, compile=True)
                results[f"ours_batch{batch_size}"] = steps_per_second(data, ours, device, args.steps or 50)
            baseline = results["batch1_fp32_eager"]["images_per_s"]
            for case in ("ours_batch8", "ours_batch32"):
                results[case]["speedup_vs_batch1_fp32"] = round(results[case]["images_per_s"] / baseline, 2)
                results[case]["share_of_bf16_peak"] = round(results[case]["achieved_tflops"] / args.peak_tflops, 4)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
