"""The container images: one Dockerfile with a final target per stage the compiled pipelines name (and no
other), each pinned, non-root, labelled, lint-clean and installing its stage's extras."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT

from pipeline.images import STAGE_IMAGES, commit_tag, image

IMAGES_DIR = PROJECT_ROOT / "images"
DOCKERFILE = IMAGES_DIR / "Dockerfile"
EXTRAS = {"render": None, "extract": None, "export": "train,export", "train": "train", "infer": "gpu"}
# The special installs: PyTorch's own index (CPU build for export, CUDA 13 for train), NVIDIA's for TensorRT.
INDEXES = {"render": None, "extract": None, "export": "https://download.pytorch.org/whl/cpu",
           "train": "https://download.pytorch.org/whl/cu130", "infer": None}
GPU_CONSTRAINTS = {"infer"}
PINNED_BASE = r"python:\d+\.\d+\.\d+-slim-\w+"
VENV_BIN = Path(sys.executable).parent


def _stages() -> dict[str, tuple[str, list[str]]]:
    """name -> (what it is FROM, its instructions), in the file's order; continuation lines joined."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    instructions = re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines()
    stages: dict[str, tuple[str, list[str]]] = {}
    for instruction in filter(str.strip, instructions):
        if instruction.startswith("FROM "):
            found = re.fullmatch(r"FROM (\S+) AS ([a-z][a-z0-9-]*)", instruction)
            assert found and found[2] not in stages, instruction  # every stage named, once
            stages[found[2]] = (found[1], [])
        else:
            assert stages, instruction
            stages[next(reversed(stages))][1].append(instruction)
    return stages


STAGES = _stages()


def _chain(name: str) -> list[str]:
    """The stage and the stages it is built on, the stage first."""
    chain = []
    while name in STAGES:
        chain.append(name)
        name = STAGES[name][0]
    return chain


def _copied_from(name: str) -> list[str]:
    return [found for line in STAGES[name][1] for found in re.findall(r"--from=(\S+)", line)]


def _final_targets() -> list[str]:
    """The stages no other stage builds on or copies from: the images."""
    used = {base for base, _ in STAGES.values()} | {source for name in STAGES for source in _copied_from(name)}
    return [name for name in STAGES if name not in used]


def _image_instructions(target: str) -> list[str]:
    return [line for name in reversed(_chain(target)) for line in STAGES[name][1]]


def _pipeline_images() -> set[str]:
    names = set()
    for path in (PROJECT_ROOT / "pipeline").glob("*.yaml"):
        spec = next(yaml.safe_load_all(path.read_text()))
        # an importer's executor (the generation pipeline's model) runs no image of ours
        names |= {executor["container"]["image"] for executor in spec["deploymentSpec"]["executors"].values()
                  if "container" in executor}
    return names


def test_every_image_the_pipelines_name_has_a_target_and_the_reverse():
    named = _pipeline_images()
    assert named == {image(stage) for stage in STAGE_IMAGES}
    assert sorted(_final_targets()) == sorted(STAGE_IMAGES)
    assert set(EXTRAS) == set(INDEXES) == set(STAGE_IMAGES)
    assert sorted(IMAGES_DIR.rglob("*Dockerfile*")) == [DOCKERFILE]  # one Dockerfile for every stage


def test_every_stage_is_built_on_the_same_pinned_base():
    bases = {_chain(name)[-1]: STAGES[_chain(name)[-1]][0] for name in STAGES}
    assert len(set(bases.values())) == 1 and re.fullmatch(PINNED_BASE, next(iter(bases.values()))), bases
    for name in STAGES:
        assert all(source in STAGES for source in _copied_from(name)), name  # no image copied from but the base


def test_the_build_stage_copies_every_package_the_project_installs():
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = {found for stage in STAGES.values() for line in stage[1]
               for found in re.findall(r"^COPY (\w+) /src/\1$", line)}
    assert packages <= sources
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert not packages & ignored


@pytest.mark.parametrize("stage", STAGE_IMAGES)
def test_target_is_pinned_non_root_labelled_and_installs_its_extras(stage):
    chain = _chain(stage)
    assert re.fullmatch(PINNED_BASE, STAGES[chain[-1]][0])
    final = _image_instructions(stage)
    copies = [line for line in final if line.startswith(("COPY", "ADD"))]
    assert len(copies) == 1 and re.fullmatch(r"COPY --from=\S+ /opt/venv /opt/venv", copies[0]), copies  # only venv
    assert not any(re.search(r"apt-get|gcc|build-essential|pip install", line) for line in final)  # no build tools
    assert "USER 1000:0" in final  # group 0: what OpenShift's random UID runs in (the runtime stage, below)
    labels = " ".join(line for line in final if line.startswith("LABEL "))
    for label in ("source", "revision", "version", "title"):
        assert f"org.opencontainers.image.{label}=" in labels, label
    assert f'org.opencontainers.image.title="locgen-{stage}"' in labels
    # The lineage names the image's commit: the ENV expands the REVISION build argument of its own stage.
    lineage = [name for name in chain if any("LOCGEN_GIT_COMMIT=${REVISION}" in line for line in STAGES[name][1])]
    assert lineage and all("ARG REVISION=unknown" in STAGES[name][1] for name in lineage)
    assert any(line.startswith('CMD ["locgen", ') for line in final)
    (venv,) = _copied_from(stage)
    installs = [line for name in _chain(venv) for line in STAGES[name][1] if "pip install" in line]
    assert len(installs) == 1, installs
    install = installs[0]
    extras = re.search(r'"/src\[([a-z,]+)\]"', install)
    assert (extras[1] if extras else None) == EXTRAS[stage]
    assert "-c /src/constraints.txt" in install
    index = re.search(r"--index-url (\S+)", install)
    assert (index[1] if index else None) == INDEXES[stage]
    assert ("-c /src/constraints-gpu.txt" in install) == (stage in GPU_CONSTRAINTS)


def test_a_random_uid_in_group_0_can_write_home_and_caches():
    """OpenShift's restricted SCC runs the image as an arbitrary UID in group 0, with no passwd entry."""
    runtime = STAGES["runtime"][1]
    setup = next(line for line in runtime if line.startswith("RUN useradd"))
    assert "--gid 0" in setup and "chgrp -R 0 /home/locgen" in setup and "chmod -R g=u /home/locgen" in setup
    environment = " ".join(line for line in runtime if line.startswith("ENV "))
    for variable in ("HOME=/home/locgen", "XDG_CACHE_HOME=/home/locgen/.cache", "LOCGEN_CACHE=/home/locgen/.cache/"):
        assert variable in environment, variable


def test_hadolint_finds_nothing():
    result = subprocess.run([str(VENV_BIN / "hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_script_builds_the_tags_the_pipelines_name():
    listed = subprocess.run([sys.executable, "-m", "pipeline.images"], capture_output=True, text=True, check=True,
                            cwd=PROJECT_ROOT).stdout.split()
    assert listed[1::2] == [image(stage) for stage in STAGE_IMAGES] and listed[0::2] == list(STAGE_IMAGES)
    tagged = subprocess.run([sys.executable, "-m", "pipeline.images"], capture_output=True, text=True, check=True,
                            cwd=PROJECT_ROOT, env={**os.environ, "LOCGEN_IMAGE_REGISTRY": "r.example/team",
                                                   "LOCGEN_IMAGE_TAG": commit_tag("0123456789abcdef0123")}).stdout
    assert "render r.example/team/render:0.1.0-0123456789ab\n" in tagged
    script = (IMAGES_DIR / "build.sh").read_text()
    assert "-m pipeline.images" in script and '--file images/Dockerfile --target "$stage"' in script
    # Per-commit tags by default; the render image is given the registry and tag to compile its pipelines for.
    assert "commit_tag('$revision')" in script
    assert '--build-arg "REGISTRY=$LOCGEN_IMAGE_REGISTRY" --build-arg "TAG=$LOCGEN_IMAGE_TAG"' in script
    deps = STAGES["deps"][1]
    assert "ARG REGISTRY=localhost:5000/locgen" in deps and "ARG TAG=0.1.0" in deps
    assert any('locgen compile --registry "${REGISTRY}" --tag "${TAG}"' in line for line in deps)
    assert subprocess.run(["bash", "-n", str(IMAGES_DIR / "build.sh")]).returncode == 0
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "out"} <= set(ignored)
