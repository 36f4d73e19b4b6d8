"""The container images: one Dockerfile per stage the compiled pipelines name (and no other), pinned,
non-root, labelled, lint-clean, each installing its stage's extras."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT

from pipeline.images import STAGE_IMAGES, image

IMAGES_DIR = PROJECT_ROOT / "images"
DOCKERFILES = sorted(IMAGES_DIR.glob("*/Dockerfile"))
EXTRAS = {"render": None, "extract": None, "export": "train,export", "train": "train", "infer": "gpu"}
VENV_BIN = Path(sys.executable).parent


def _pipeline_images() -> set[str]:
    names = set()
    for path in (PROJECT_ROOT / "pipeline").glob("*.yaml"):
        spec = next(yaml.safe_load_all(path.read_text()))
        names |= {executor["container"]["image"] for executor in spec["deploymentSpec"]["executors"].values()}
    return names


def test_every_image_the_pipelines_name_has_a_dockerfile_and_the_reverse():
    named = _pipeline_images()
    assert named == {image(stage) for stage in STAGE_IMAGES}
    assert [path.parent.name for path in DOCKERFILES] == sorted(STAGE_IMAGES)
    assert set(EXTRAS) == set(STAGE_IMAGES)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_dockerfile_is_pinned_non_root_labelled_and_installs_its_extras(dockerfile):
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(bases) == 2 and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+( AS build)?", base) for base in bases)
    final = text[text.rindex("\nFROM "):]
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert not re.search(r"apt-get|gcc|build-essential|pip install", final)  # no build tools in the final layer
    assert re.search(r"^USER 1000:1000$", final, flags=re.MULTILINE)
    for label in ("source", "revision", "version", "title"):
        assert f"org.opencontainers.image.{label}=" in final, label
    assert "LOCGEN_GIT_COMMIT=${REVISION}" in final  # the lineage names the image's commit
    install = re.search(r"pip install(?:[^\n\\]|\\\n)*", text)[0]
    extras = re.search(r'"/src\[([a-z,]+)\]"', install)
    assert (extras[1] if extras else None) == EXTRAS[dockerfile.parent.name]
    assert "-c /src/constraints.txt" in install


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_hadolint_finds_nothing(dockerfile):
    result = subprocess.run([str(VENV_BIN / "hadolint"), "--no-color", str(dockerfile)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_script_builds_the_tags_the_pipelines_name():
    listed = subprocess.run([sys.executable, "-m", "pipeline.images"], capture_output=True, text=True, check=True,
                            cwd=PROJECT_ROOT).stdout.split()
    assert listed[1::2] == [image(stage) for stage in STAGE_IMAGES] and listed[0::2] == list(STAGE_IMAGES)
    script = (IMAGES_DIR / "build.sh").read_text()
    assert "-m pipeline.images" in script and 'images/$stage/Dockerfile' in script
    assert subprocess.run(["bash", "-n", str(IMAGES_DIR / "build.sh")]).returncode == 0
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "out"} <= set(ignored)
