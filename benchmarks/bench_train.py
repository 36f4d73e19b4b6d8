"""Training speed: steps (and images) per second of real FastCUT steps on real training tiles.

- `--device cpu` (default): the `tiny` preset, as CI and the demo run it.
- `--device cuda`: 256 px images per second for the official code's way (batch 1, fp32, eager)
  against batch 32 with each speed-up added in turn (bf16 autocast, cuDNN autotuning,
  channels_last, fused Adam), and ours (all of them and torch.compile) at batch 32 and 8, in one
  run; `--cases` picks some (compiling takes minutes per case). FLOPs are counted on an eager step
  by torch's FlopCounterMode; the share is of the GPU's bf16 peak (`--peak-tflops`, 989 for an
  H100/H200 SXM, dense). Goal: 10x the batch-1 fp32 figure.

The tiles: training pairs of central Helsinki rendered by `locgen render` into a temporary folder.
Prints one JSON document. Usage: python benchmarks/bench_train.py [--device cpu|cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from components.render.job import RenderSettings, render
from components.train.config import PRESETS, TrainConfig
from components.train.data import load_tiles
from components.train.train import Models, _optimisers, _runtime, _step

ROOT = Path(__file__).resolve().parents[1]
HELSINKI_PBF = ROOT / "data" / "osm" / "helsinki-center.osm.pbf"
HOT_SPOTS = 15
WARM_UP_STEPS = 3  # the first steps pay for allocation and, with torch.compile, for compiling


def training_tiles(folder: str) -> str:
    out = f"{folder}/pairs"
    render(RenderSettings(osm=[str(HELSINKI_PBF)], out=out, pairs=64, city="helsinki", progress=False,
                          locations=["osm:amenity=bicycle_rental,amenity=bicycle_parking"]))
    return out


def flop_per_image(data, config: TrainConfig, device: torch.device) -> float:
    """FLOPs of one training step per image, counted on an eager step (FlopCounterMode sees no compiled code)."""
    eager = config.override(compile=False)
    models = Models(eager).to(device)
    runtime = _runtime(models, eager, device)
    optimisers = _optimisers(models, eager, device)
    with FlopCounterMode(display=False) as counter:
        _step(models, runtime, optimisers, data, eager, 0)
    return counter.get_total_flops() / eager.batch_size


def steps_per_second(data, config: TrainConfig, device: torch.device, steps: int, flop_image: float,
                     profile: bool = False) -> dict:
    """Real training steps, timed after a warm-up; with `profile`, where three more steps spend their time."""
    torch.manual_seed(0)
    models = Models(config).to(device)
    runtime = _runtime(models, config, device)
    optimisers = _optimisers(models, config, device)
    for step in range(WARM_UP_STEPS):
        _step(models, runtime, optimisers, data, config, step)
    _synchronise(device)
    started = time.perf_counter()
    for step in range(WARM_UP_STEPS, WARM_UP_STEPS + steps):
        _step(models, runtime, optimisers, data, config, step)
    _synchronise(device)
    seconds = time.perf_counter() - started
    images_per_s = steps * config.batch_size / seconds
    hot_spots = _hot_spots(models, runtime, optimisers, data, config, device) if profile else None
    return {"batch_size": config.batch_size, "crop_px": config.crop_px, "steps_per_s": round(steps / seconds, 3),
            "images_per_s": round(images_per_s, 2), "tflop_per_step": round(flop_image * config.batch_size / 1e12, 4),
            "achieved_tflops": round(flop_image * images_per_s / 1e12, 2),
            **({"hot_spots": hot_spots} if profile else {})}


def _hot_spots(models, runtime, optimisers, data, config: TrainConfig, device: torch.device) -> list[dict]:
    """The operators (CPU) or kernels (CUDA) that take most of three steps' time: what to speed up next."""
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as profiler:
        for step in range(3):
            _step(models, runtime, optimisers, data, config, 10_000 + step)
        _synchronise(device)
    kind = "device" if device.type == "cuda" else "cpu"
    events = sorted(profiler.key_averages(), key=lambda event: getattr(event, f"self_{kind}_time_total"),
                    reverse=True)
    total_us = sum(getattr(event, f"self_{kind}_time_total") for event in events)
    return [{"name": event.key[:80], "share": round(getattr(event, f"self_{kind}_time_total") / total_us, 4),
             "calls": event.count} for event in events[:HOT_SPOTS]]


def cuda_cases(data, device: torch.device, steps: int, peak_tflops: float, only: list[str],
               profile_cases: list[str]) -> dict:
    """The official way, then each speed-up added in turn at batch 32 (each switchable), then ours at batch 8."""
    plain = PRESETS["fastcut"].override(bf16=False, channels_last=False, fused_adam=False, compile=False,
                                        cudnn_benchmark=False)
    fast = plain.override(batch_size=32, bf16=True)
    cases = {"batch1_fp32_eager": plain.override(batch_size=1),
             "batch32_fp32_eager": plain.override(batch_size=32),
             "batch32_+bf16": fast,
             "batch32_+bf16_+cudnn_benchmark": (fast := fast.override(cudnn_benchmark=True)),
             "batch32_+bf16_+cudnn_benchmark_+channels_last": (fast := fast.override(channels_last=True)),
             "batch32_+bf16_+cudnn_benchmark_+channels_last_+fused_adam": fast.override(fused_adam=True),
             "ours_batch32": PRESETS["fastcut"].override(batch_size=32, compile=True),
             "ours_batch32_without_channels_last": PRESETS["fastcut"].override(batch_size=32, compile=True,
                                                                               channels_last=False),
             "ours_batch8": PRESETS["fastcut"].override(batch_size=8, compile=True)}
    flop_image = flop_per_image(data, cases["batch1_fp32_eager"], device)
    results = {}
    for name, config in cases.items():
        if only and name not in only and name != "batch1_fp32_eager":
            continue
        results[name] = steps_per_second(data, config, device, steps, flop_image, name in profile_cases)
        results[name]["speedup_vs_batch1_fp32"] = round(
            results[name]["images_per_s"] / results["batch1_fp32_eager"]["images_per_s"], 2)
        results[name]["share_of_bf16_peak"] = round(results[name]["achieved_tflops"] / peak_tflops, 4)
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)  # a case at a time: compiling is slow
    return results


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (cpu 30, cuda 50)")
    parser.add_argument("--cases", nargs="*", default=[], help="CUDA cases to run (default all; the baseline always)")
    parser.add_argument("--profile", nargs="*", default=[], metavar="CASE",
                        help="cases (tiny on CPU) whose hot spots to list, from torch.profiler")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    args = parser.parse_args()
    device = torch.device(args.device)
    results: dict = {"machine": f"{platform.machine()}, torch {torch.__version__}, "
                                f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}"}
    with tempfile.TemporaryDirectory() as folder:
        data = load_tiles(training_tiles(folder), validation_share=0.0)
        if device.type == "cpu":
            tiny = PRESETS["tiny"]
            results["tiny"] = steps_per_second(data, tiny, device, args.steps or 30, flop_per_image(data, tiny, device),
                                               "tiny" in args.profile)
        else:
            results.update(cuda_cases(data, device, args.steps or 50, args.peak_tflops, args.cases, args.profile))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
