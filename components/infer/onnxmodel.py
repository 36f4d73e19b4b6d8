"""A generator exported to ONNX, run by ONNX Runtime on TensorRT, CUDA or the CPU.

The contract it runs by (tensor names, pixel conversions, file names, tile sizes) is
`components.core.onnx_io`. This module needs onnxruntime and numpy only (no torch): it is what the
inference image runs.

Providers: `auto` tries TensorRT, then CUDA, then the CPU, and keeps the first whose session
really runs on it. ONNX Runtime does not fail when a GPU provider cannot start (no GPU, missing
CUDA or TensorRT libraries): it quietly runs on the CPU. So the session's own provider list
(`session.get_providers()`) is what decides, never `get_available_providers()`, which lists
TensorRT in any onnxruntime-gpu install. Asking for `tensorrt` or `cuda` where it cannot run is an
error, not a silent CPU run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from components.core.errors import LocgenError
from components.core.onnx_io import (
    FP16_SUFFIX,
    INPUT_NAME,
    OUTPUT_NAME,
    PROVIDERS,
    fp16_path,
    to_model_input,
    to_tiles,
)
from components.core.provenance import file_sha256
from components.infer.settings import AUTO_ORDER

GPU_FIX = ("install onnxruntime-gpu (pip install 'locgen[gpu]': CUDA 13 and TensorRT 10) on a machine with an "
           "NVIDIA GPU, or use --provider cpu")

# What InferenceSession raises for a file that is no (valid) ONNX model; none derives from RuntimeError.
_LOAD_ERRORS = (ort_state.Fail, ort_state.InvalidGraph, ort_state.InvalidProtobuf, ort_state.NoSuchFile,
                ort_state.NotImplemented, ort_state.InvalidArgument, ort_state.RuntimeException)

log = logging.getLogger(__name__)


class ProviderUnavailable(LocgenError):
    """The provider asked for cannot run here; `reason` says why, in a few words."""

    def __init__(self, provider: str, reason: str):
        super().__init__(f"--provider {provider}: {reason}; {GPU_FIX}")
        self.reason = reason


def read_metadata(model_path: Path) -> dict:
    """The locgen metadata stored in an exported model (every value JSON-encoded)."""
    session = _session(model_path, [PROVIDERS["cpu"]])
    stored = session.get_modelmeta().custom_metadata_map
    if "locgen_version" not in stored:
        raise LocgenError(f"{model_path}: an ONNX model without locgen metadata; give the .onnx that locgen export "
                          "wrote")
    return {key: json.loads(value) for key, value in stored.items()}


class Translator(NamedTuple):
    """A session that translates batches of tiles, on the provider it really runs on."""

    session: ort.InferenceSession
    provider: str  # tensorrt, cuda or cpu
    model_path: Path  # the file the session runs (the fp16 variant on TensorRT)
    model_sha256: str

    def translate(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) plain tiles -> uint8 (N, H, W, 3) generated tiles.

        Input and output are bound to the provider's device (I/O binding), so a batch crosses to the
        GPU once and comes back once, with no staging copies by ONNX Runtime in between.
        """
        device = "cpu" if self.provider == "cpu" else "cuda"
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(to_model_input(tiles), device, 0))
        binding.bind_output(OUTPUT_NAME, device, 0)
        self.session.run_with_iobinding(binding)
        return to_tiles(binding.copy_outputs_to_cpu()[0])


def open_translator(model_path: Path, provider: str, tile_px: tuple[int, int], batch_size: int,
                    cache_dir: Path) -> Translator:
    """A Translator on `provider` (auto, tensorrt, cuda or cpu); logs the provider it really runs on."""
    candidates = AUTO_ORDER if provider == "auto" else (provider,)
    skipped = []
    for candidate in candidates:
        try:
            translator = _open_on(candidate, model_path, tile_px, batch_size, cache_dir)
        except ProviderUnavailable as error:
            if provider != "auto":
                raise
            skipped.append(f"{candidate} ({error.reason})")
            continue
        log.info("running %s on %s (--provider %s%s)", translator.model_path.name,
                 translator.session.get_providers()[0], provider, "".join(f"; skipped {text}" for text in skipped))
        return translator
    raise LocgenError(f"--provider auto: no provider could run {model_path}: {'; '.join(skipped)}")


def _open_on(provider: str, model_path: Path, tile_px: tuple[int, int], batch_size: int,
             cache_dir: Path) -> Translator:
    name = PROVIDERS.get(provider)
    if name is None:
        raise LocgenError(f"--provider {provider}: unknown; give auto, {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    if name not in available:
        raise ProviderUnavailable(provider, f"this onnxruntime has no {name}, only {', '.join(available)}")
    if provider != "cpu":
        # The CUDA 13 and cuDNN 9 libraries of the pip wheels (the infer image): found in site-packages, not
        # on the loader's path. Where they come from the system instead, this finds them there.
        ort.preload_dlls()
    if provider == "tensorrt":
        model_path = _fp16_variant(model_path)
        providers = [(name, _tensorrt_options(tile_px, batch_size, cache_dir)), PROVIDERS["cuda"], PROVIDERS["cpu"]]
    else:
        providers = [name, PROVIDERS["cpu"]] if provider != "cpu" else [name]
    session = _session(model_path, providers, provider)
    if name not in session.get_providers():
        raise ProviderUnavailable(provider, f"{name} did not start and ONNX Runtime fell back to "
                                            f"{', '.join(session.get_providers())} (no usable GPU, or the CUDA 13 / "
                                            "TensorRT 10 libraries are missing)")
    return Translator(session, provider, model_path, file_sha256(model_path))


def _fp16_variant(model_path: Path) -> Path:
    """The file TensorRT runs: MODEL.fp16.onnx, whose instance norms stay fp32 (fp16 instance norm is a
    known source of wrong output in TensorRT); the fp16 variant itself when that is what was given."""
    if model_path.name.endswith(FP16_SUFFIX):
        return model_path
    variant = fp16_path(model_path)
    if not variant.is_file():
        raise LocgenError(f"--provider tensorrt: no {variant.name} beside {model_path}; export the model again with "
                          "locgen export (it writes the fp16 variant), or use --provider cuda")
    return variant


def _tensorrt_options(tile_px: tuple[int, int], batch_size: int, cache_dir: Path) -> dict:
    """fp16 engines for one tile size and batches of 1 to batch_size, built once and cached on disk.

    The engine cache keys engines by model, shapes and GPU, so one folder serves every model; the
    timing cache makes the first build of a new model faster.
    """
    folder = Path(cache_dir) / "tensorrt"
    folder.mkdir(parents=True, exist_ok=True)
    height, width = tile_px
    return {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(folder),
        "trt_profile_min_shapes": f"{INPUT_NAME}:1x3x{height}x{width}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{batch_size}x3x{height}x{width}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{batch_size}x3x{height}x{width}",
    }


def _session(model_path: Path, providers: list, provider: str = "cpu") -> ort.InferenceSession:
    """An ONNX Runtime session on `providers` (in order); `provider` names the first, for the errors."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a provider that cannot start is reported by us, in one line
    try:
        return ort.InferenceSession(str(model_path), options, providers=providers)
    except ort_state.EPFail as error:
        raise ProviderUnavailable(provider, f"it failed on {model_path.name}: {_first_line(error)}") from None
    except _LOAD_ERRORS as error:
        raise LocgenError(f"{model_path}: ONNX Runtime cannot load it ({_first_line(error)}); "
                          "give the .onnx that locgen export wrote") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
