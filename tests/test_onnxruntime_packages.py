"""One ONNX Runtime per environment, pinned: the CPU package for CI and export, the GPU one (CUDA 13, TensorRT 10)
for the inference image, never both."""

import re
import tomllib

from conftest import PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
DOCKERFILE = PROJECT_ROOT / "images" / "Dockerfile"  # one target a stage's image


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[a-z,]+\])?==([0-9][0-9A-Za-z.]*)", line.strip())
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def _constraints(name: str) -> dict[str, str]:
    lines = (PROJECT_ROOT / name).read_text().splitlines()
    return _pins([line for line in lines if line and not line.startswith("#")])


def test_every_extra_holds_at_most_one_onnx_runtime_and_all_pin_the_same_version():
    versions = set()
    for name, requirements in EXTRAS.items():
        pins = _pins(requirements)
        runtimes = {"onnxruntime", "onnxruntime-gpu"} & {re.split(r"[\[=<>]", r)[0] for r in requirements}
        assert len(runtimes) <= 1, f"extra {name} installs {runtimes}"
        versions |= {pins[runtime] for runtime in runtimes}
    assert versions == {"1.31.1"}


def test_gpu_environment_pins_cuda_13_and_tensorrt_10():
    gpu = _constraints("constraints-gpu.txt")
    assert gpu["onnxruntime-gpu"] == _pins(EXTRAS["gpu"])["onnxruntime-gpu"]
    assert gpu["tensorrt-cu13-libs"].split(".")[0] == "10"  # onnxruntime-gpu 1.31 loads TensorRT 10, not 11
    assert gpu["nvidia-cuda-runtime"].split(".")[0] == "13" and "nvidia-cudnn-cu13" in gpu
    assert _pins(EXTRAS["gpu"])["tensorrt-cu13-libs"] == gpu["tensorrt-cu13-libs"]


def _stage(text: str, name: str) -> str:
    return re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, flags=re.MULTILINE | re.DOTALL)[1]


def test_the_inference_image_installs_the_gpu_extra_alone_with_the_gpu_pins():
    text = DOCKERFILE.read_text()
    target = _stage(text, "infer")
    venv = _stage(text, re.search(r"COPY --from=(\S+) /opt/venv", target)[1])  # where its environment is built
    installs = re.findall(r"pip install(?:[^\n\\]|\\\n)*", venv)  # with its continuation lines
    assert len(installs) == 1
    assert re.findall(r"\[([a-z,]+)\]", installs[0]) == ["gpu"]
    assert "-c /src/constraints.txt" in installs[0] and "-c /src/constraints-gpu.txt" in installs[0]
    assert "LD_LIBRARY_PATH=/opt/venv/lib/python3.12/site-packages/tensorrt_libs" in target  # libnvinfer.so.10


def test_ci_installs_the_cpu_runtime_only():
    install = next(line for line in (PROJECT_ROOT / "Makefile").read_text().splitlines() if " -e '.[" in line)
    extras = set(re.search(r"\.\[([a-z,]+)\]", install)[1].split(","))
    assert "gpu" not in extras and "export" in extras
