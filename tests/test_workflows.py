"""The GitHub workflows: valid against GitHub's workflow schema (offline, check-jsonschema's vendored copy),
CI runs what .ci/run runs, retraining submits the training pipeline with parameters it has."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT

from pipeline.pipelines import build_pipelines

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def _valid(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("name", ["ci.yml", "retrain.yml"])
def test_workflow_is_valid(name):
    result = _valid(WORKFLOWS / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_invalid_workflow_would_be_caught(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  test:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    assert _valid(broken).returncode != 0


def _steps(workflow: dict, job: str) -> str:
    return "\n".join(step.get("run", "") for step in workflow["jobs"][job]["steps"])


def test_ci_runs_the_project_ci_and_builds_images_on_tags():
    workflow = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
    assert "bash .ci/run" in _steps(workflow, "test")
    images = workflow["jobs"]["images"]
    assert images["if"] == "startsWith(github.ref, 'refs/tags/v')" and images["needs"] == "test"
    steps = _steps(workflow, "images")
    # One per-commit tag, chosen before the images are built, for the images and the YAML that names them.
    assert steps.index("commit_tag('$GITHUB_SHA')") < steps.index("images/build.sh --push") < steps.index(
        'locgen compile --registry "$LOCGEN_IMAGE_REGISTRY" --tag "$LOCGEN_IMAGE_TAG"')


def test_retraining_submits_the_training_pipeline_with_its_parameters():
    text = (WORKFLOWS / "retrain.yml").read_text()
    workflow = yaml.safe_load(text)
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"schedule", "workflow_dispatch"}  # a code change reaches the cluster with new images
    # It submits the YAML that the release's render image carries, compiled for that image's registry and tag.
    assert workflow["jobs"]["submit"]["container"]["image"] == (
        "${{ vars.LOCGEN_IMAGE_REGISTRY }}/render:${{ vars.LOCGEN_IMAGE_TAG }}")
    assert "locgen compile" not in text and "actions/checkout" not in text
    command = _steps(workflow, "submit")
    assert "locgen submit" in command and "--pipeline train" in command
    assert "--token" not in command  # the token travels in the environment, never on a command line
    # It waits for the run's end within the job's time, so the job reports the run's state and promotion.
    wait_s = int(re.search(r"--wait (\d+)", command)[1])
    assert wait_s < workflow["jobs"]["submit"]["timeout-minutes"] * 60
    submit = next(step for step in workflow["jobs"]["submit"]["steps"] if "locgen submit" in step.get("run", ""))
    assert submit["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}"
    names = set(re.findall(r'--param "(\w+)=', command))
    assert names and names <= set(inspect.signature(build_pipelines()["train"].pipeline_func).parameters)
