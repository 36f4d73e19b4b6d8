"""locgen submit: what it would send (package, version, parameters, schedule, token) decided from the
arguments and checked before any request; bad input fails clearly."""

import json

import pytest

from components.core.errors import LocgenError
from locgen.cli import main
from pipeline.local import PIPELINE_DIR
from pipeline.submit import TOKEN_ENV, plan

OSLO = [{"city": "oslo", "osm": "s3://osm/oslo.osm.pbf", "locations": ["https://gbfs.example/oslo/gbfs.json"]}]


def test_a_scheduled_training_submission(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    submission = plan("https://kubeflow.example.com/pipeline/", "train",
                      {"cities": OSLO, "steps": 5000, "train_gpus": 4},
                      "retraining", "0 3 * * 1", token)
    assert submission.host == "https://kubeflow.example.com/pipeline"
    assert submission.package == PIPELINE_DIR / "train.yaml" and submission.pipeline_name == "locgen-train"
    assert submission.version_name.startswith("0.1.0-") and len(submission.version_name) == len("0.1.0-") + 12
    # A GPU count goes as a text: KFP's driver reads a parameterised accelerator count only from a string.
    assert submission.parameters == {"cities": OSLO, "steps": 5000, "train_gpus": "4"}
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


def test_send_uploads_a_version_and_starts_a_run_on_a_kfp_endpoint(tmp_path, monkeypatch):
    from kfp_server import KfpServer

    from pipeline.submit import send

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token = tmp_path / "token"
    token.write_text("bearer-secret")
    with KfpServer() as server:
        submission = plan(server.url, "generate", {"grid": 3, "city": "oslo"}, "cities", None, token)
        result = send(submission)
    assert result == {"run_id": "run-1", "link": f"{server.url}/#/runs/details/run-1"}
    posts = {request.path.rsplit("/v2beta1/", 1)[1]: request for request in server.requests if request.method == "POST"}
    assert list(posts) == ["pipelines/upload", "pipelines/upload_version", "experiments", "runs"]
    compiled = (PIPELINE_DIR / "generate.yaml").read_bytes()
    assert posts["pipelines/upload"].upload == posts["pipelines/upload_version"].upload == compiled
    assert posts["pipelines/upload"].query["name"] == "locgen-generate"
    assert posts["pipelines/upload_version"].query["name"] == submission.version_name
    assert posts["experiments"].body["display_name"] == "cities"
    run = posts["runs"].body
    assert run["pipeline_version_reference"] == {"pipeline_id": "pipeline-1", "pipeline_version_id": "version-1"}
    assert run["runtime_config"]["parameters"] == {"grid": 3, "city": "oslo"}
    assert run["experiment_id"] == "experiment-1"
    assert {request.authorization for request in server.requests} == {"Bearer bearer-secret"}


def test_send_schedules_recurring_runs_of_an_existing_pipeline(monkeypatch):
    from kfp_server import KfpServer

    from pipeline.submit import send

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with KfpServer(pipelines={"locgen-train": "existing-7"}) as server:
        result = send(plan(server.url, "train", {"steps": 100}, "retraining", "0 3 * * 1", None))
    assert result["recurring_run_id"] == "recurring-1" and result["cron"] == "0 0 3 * * 1"
    posts = {request.path.rsplit("/v2beta1/", 1)[1]: request for request in server.requests if request.method == "POST"}
    assert "pipelines/upload" not in posts  # a new version of the pipeline that is there
    assert posts["pipelines/upload_version"].query["pipelineid"] == "existing-7"
    job = posts["recurringruns"].body
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert job["runtime_config"]["parameters"] == {"steps": 100}
