"""The ONNX I/O contract between the export stage (which writes models) and the infer stage (which
runs them): the tensor names and layout, the pixel conversions, the files beside MODEL.onnx, the
names of ONNX Runtime's providers, and the tile sizes a model takes. numpy only (no onnxruntime,
no torch), so both stages and their tests share it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.core.errors import LocgenError

INPUT_NAME = "image"  # (batch, 3, height, width) float32 RGB in [-1, 1]
OUTPUT_NAME = "generated"  # the same shape and range
FP16_SUFFIX = ".fp16.onnx"  # beside MODEL.onnx: the variant TensorRT runs
PARITY_SUFFIX = ".parity.json"  # beside MODEL.onnx: how closely it matches PyTorch
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def fp16_path(model_path: Path) -> Path:
    """MODEL.onnx -> MODEL.fp16.onnx."""
    return model_path.with_name(model_path.name.removesuffix(".onnx") + FP16_SUFFIX)


def to_model_input(tiles: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB tiles -> float32 (N, 3, H, W) in [-1, 1]: rgb / 127.5 - 1, as in training."""
    return np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def to_tiles(generated: np.ndarray) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3) RGB, rounded half to even as training does."""
    pixels = np.clip(np.rint((generated.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def check_tile_size(height_px: int, width_px: int, multiple: int, least: int, what: str) -> None:
    """A clear error for tiles the network cannot take (sides multiples of `multiple` px, at least
    `least` px: the model's size_multiple_px and min_size_px), naming the sizes it can."""
    for side in (height_px, width_px):
        if side % multiple or side < least:
            lower = max(least, side - side % multiple)
            raise LocgenError(f"{what}: tiles of {height_px}x{width_px} px; the model takes sides that are multiples "
                              f"of {multiple} px of at least {least} px (e.g. {lower} or {lower + multiple}); "
                              "render the tiles with such a --size-px")
