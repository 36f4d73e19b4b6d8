"""Inference speed: 256 px tiles per second, ONNX Runtime against PyTorch, same model, same tiles, one run.

- `--device cpu` (default): ONNX Runtime on the CPU (fp32) against PyTorch eager (fp32).
- `--device cuda`: at batch 32, TensorRT (the fp16 variant), the CUDA provider (fp32) and PyTorch
  eager with bf16 autocast, and whether each paints the dots PyTorch fp32 paints (one to one within
  2 px, as F1; on the bundled generator, which is trained: an untrained one paints no dots). Goal:
  TensorRT at least 3x PyTorch bf16. The TensorRT engine is built (and cached) in the warm-up.

Models (`--models`): `tiny`, the bundled generator and its ONNX export; `fastcut`, the paper's
generator size (ngf 64, 9 blocks), untrained, exported here the way `locgen export` does it.
Tiles: the 5 x 5 grid of Kotka rendered by `locgen render`, repeated to `--tiles`. Every case runs
the whole way from uint8 tiles in memory to uint8 tiles in memory (normalisation, copies to and from
the device included): one warm-up run each, then `--repeats` rounds in which every case runs once
(the machine's speed drifts; this way alike for all cases), reported as the median, best and worst.

Prints one JSON document. Usage: python benchmarks/bench_infer.py [--device cpu|cuda] [--models tiny,fastcut]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from components.core.matching import dot_agreement
from components.core.onnx_io import fp16_path
from components.core.storage import open_store
from components.core.tileset import decode_tile, read_manifest
from components.export.exporter import model_metadata, to_onnx, with_exact_norms
from components.export.fp16 import to_fp16
from components.infer.onnxmodel import open_translator
from components.pretrained import BUNDLED_MODEL
from components.render.job import RenderSettings, render
from components.train.generator_file import load_generator
from components.train.networks import Generator, init_weights
from components.train.validation import translate

ROOT = Path(__file__).resolve().parents[1]
KOTKA_PBF = ROOT / "data" / "osm" / "kotka-karhula.osm.pbf"


def kotka_tiles(folder: str, count: int) -> np.ndarray:
    """uint8 (count, 256, 256, 3): the rendered Kotka grid, repeated."""
    out = f"{folder}/kotka"
    render(RenderSettings(osm=[str(KOTKA_PBF)], out=out, center=(26.95, 60.53), grid=5, city="kotka",
                          progress=False))
    store = open_store(out)
    tiles = np.stack([decode_tile(store.get_bytes(row["path"]), row["path"], row) for row in read_manifest(store)])
    return np.resize(tiles, (count, *tiles.shape[1:]))


def models(names: list[str], folder: str) -> dict[str, tuple[Generator, Path]]:
    """name -> (PyTorch generator, its fp32 ONNX file with the fp16 variant beside it)."""
    generator, trained = load_generator()
    found = {}
    for name in names:
        if name == "tiny":
            found[name] = (generator, BUNDLED_MODEL)
            continue
        torch.manual_seed(0)
        paper = Generator(64, 9).eval()
        init_weights(paper)
        path = Path(folder) / f"{name}.onnx"
        metadata = model_metadata({**trained, "ngf": 64, "n_blocks": 9}, "fp32")
        path.write_bytes(to_onnx(with_exact_norms(paper), metadata).SerializeToString())
        fp16_path(path).write_bytes(to_fp16(to_onnx(paper, metadata)).SerializeToString())
        found[name] = (paper, path)
    return found


def rates(seconds: list[float], tiles: int) -> dict:
    return {"tiles_per_s": round(tiles / statistics.median(seconds), 2),
            "best_tiles_per_s": round(tiles / min(seconds), 2), "worst_tiles_per_s": round(tiles / max(seconds), 2)}


def pytorch(generator: Generator, device: torch.device, batch_size: int, bf16: bool):
    """PyTorch eager, the way training validates: uint8 to the device, normalised there, uint8 back."""
    model = generator.to(device)

    def run(tiles: np.ndarray) -> np.ndarray:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            generated = translate(model, torch.from_numpy(tiles).permute(0, 3, 1, 2), device, batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return generated
    return run


def onnx_runtime(path: Path, provider: str, batch_size: int, cache_dir: Path):
    translator = open_translator(path, provider, (256, 256), batch_size, cache_dir)

    def run(tiles: np.ndarray) -> np.ndarray:
        return np.concatenate([translator.translate(tiles[start:start + batch_size])
                               for start in range(0, len(tiles), batch_size)])
    return run, translator.session.get_providers()[0]


def bench_model(generator: Generator, path: Path, tiles: np.ndarray, args, cache_dir: Path) -> dict:
    device = torch.device(args.device)
    if args.device == "cpu":
        cases = {"pytorch_fp32": (pytorch(generator, device, args.batch_size, bf16=False), None),
                 "onnxruntime_cpu_fp32": onnx_runtime(path, "cpu", args.batch_size, cache_dir)}
        reference = "pytorch_fp32"
    else:
        cases = {"pytorch_fp32": (pytorch(generator, device, args.batch_size, bf16=False), None),
                 "pytorch_bf16": (pytorch(generator, device, args.batch_size, bf16=True), None),
                 "onnxruntime_cuda_fp32": onnx_runtime(path, "cuda", args.batch_size, cache_dir),
                 "onnxruntime_tensorrt_fp16": onnx_runtime(path, "tensorrt", args.batch_size, cache_dir)}
        reference = "pytorch_bf16"
    outputs = {name: run(tiles) for name, (run, _) in cases.items()}  # the warm-up run, and what each paints
    seconds = {name: [] for name in cases}
    for _ in range(args.repeats):  # round robin: the machine's drift between runs touches every case alike
        for name, (run, _) in cases.items():
            started = time.perf_counter()
            run(tiles)
            seconds[name].append(time.perf_counter() - started)
    results = {name: {**rates(seconds[name], len(tiles)), **({"provider": provider} if provider else {})}
               for name, (_, provider) in cases.items()}
    for name in cases:
        results[name]["speed_vs_" + reference] = round(results[name]["tiles_per_s"]
                                                       / results[reference]["tiles_per_s"], 2)
        results[name]["dots_vs_pytorch_fp32"] = dot_agreement(outputs["pytorch_fp32"], outputs[name]).as_dict()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", default="tiny", help="comma-separated: tiny, fastcut (tiny)")
    parser.add_argument("--tiles", type=int, help="tiles per run (default: 32 on cpu, 256 on cuda)")
    parser.add_argument("--batch-size", type=int, help="tiles per batch (default: 8 on cpu, 32 on cuda)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.tiles = args.tiles or (32 if args.device == "cpu" else 256)
    args.batch_size = args.batch_size or (8 if args.device == "cpu" else 32)
    with tempfile.TemporaryDirectory() as folder:
        tiles = kotka_tiles(folder, args.tiles)
        results = {name: bench_model(generator, path, tiles, args, Path(folder) / "cache")
                   for name, (generator, path) in models(args.models.split(","), folder).items()}
    print(json.dumps({
        "machine": platform.processor() or platform.machine(), "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__, "onnxruntime": ort.__version__, "size_px": 256, "tiles": args.tiles,
        "batch_size": args.batch_size, "repeats": args.repeats, "models": results}, indent=2))


if __name__ == "__main__":
    main()
