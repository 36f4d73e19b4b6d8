"""locgen submit: what it would send (package, version, parameters, schedule, token) decided from the
arguments and checked before any request; bad input fails clearly."""

import json

import pytest

from components.cli import main
from components.core.errors import LocgenError
from pipeline.local import PIPELINE_DIR
from pipeline.submit import TOKEN_ENV, plan


def test_a_scheduled_training_submission(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    submission = plan("https://kubeflow.example.com/pipeline/", "train",
                      {"city": "oslo", "osm": "s3://osm/oslo.osm.pbf", "steps": 5000, "train_gpus": 4},
                      "retraining", "0 3 * * 1", token)
    assert submission.host == "https://kubeflow.example.com/pipeline"
    assert submission.package == PIPELINE_DIR / "train.yaml" and submission.pipeline_name == "locgen-train"
    assert submission.version_name.startswith("0.1.0-") and len(submission.version_name) == len("0.1.0-") + 12
    assert submission.parameters == {"city": "oslo", "osm": "s3://osm/oslo.osm.pbf", "steps": 5000, "train_gpus": 4}
    assert submission.cron == "0 0 3 * * 1"  # KFP's cron has seconds first
    assert submission.token == "secret-token" and submission.experiment == "retraining"


def test_the_token_comes_from_the_environment_and_the_cli_never_prints_it(monkeypatch, capsys):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert plan("http://localhost:8080", "generate", {}, "locgen", None, None).token == "from-env"
    assert main(["submit", "--host", "http://localhost:8080", "--pipeline", "generate", "--param", "grid=3",
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    described = json.loads(printed)
    assert described["token"] == "set" and "from-env" not in printed
    assert described["parameters"] == {"grid": 3} and described["cron"] is None


@pytest.mark.parametrize("arguments, message", [
    ({"host": "localhost"}, "--host 'localhost': give the Kubeflow Pipelines endpoint"),
    ({"parameters": {"colour": "red"}}, "unknown parameters ['colour'] for locgen-end-to-end"),
    ({"parameters": {"steps": "many"}}, 'parameter steps="many": give a whole number, like 0'),
    ({"parameters": {"preset": "huge"}}, "preset 'huge': unknown"),
    ({"schedule": "every monday"}, "--schedule 'every monday': give a cron expression"),
    ({"token_file": "missing"}, "--token-file .*missing: cannot read it"),
])
def test_bad_input_fails_before_any_request(tmp_path, arguments, message):
    values = {"host": "http://localhost:8080", "pipeline": "end-to-end", "parameters": {}, "experiment": "locgen",
              "schedule": None, "token_file": None, **arguments}
    if values["token_file"]:
        values["token_file"] = tmp_path / values["token_file"]
    with pytest.raises(LocgenError, match=message.replace("[", r"\[").replace("(", r"\(")):
        plan(values["host"], values["pipeline"], values["parameters"], values["experiment"], values["schedule"],
             values["token_file"])


def test_the_cli_requires_a_host(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["submit", "--pipeline", "train"])
    assert stop.value.code == 2 and "--host" in capsys.readouterr().err
