"""locgen submit: what it would send (package, version, parameters, schedule, token) decided from the
arguments and checked before any request; bad input fails clearly."""

import json
import re

import pytest

from components.core.errors import LocgenError
from locgen.cli import main
from pipeline.local import PIPELINE_DIR
from pipeline.submit import TOKEN_ENV, plan

OSLO = [{"city": "oslo", "osm": "s3://osm/oslo.osm.pbf", "locations": ["https://gbfs.example/oslo/gbfs.json"],
         "holdout": "10.74,59.91,10.76,59.92"}]
# What a cluster run needs beside the defaults: the object store, and the data there.
ON_CLUSTER = {"end-to-end": {"cities": OSLO, "store": "s3://locgen/cities", "target_osm": "s3://osm/kotka.osm.pbf"},
              "generate": {"store": "s3://locgen/cities", "osm": "s3://osm/oslo.osm.pbf",
                           "model_uri": "s3://locgen/cities/helsinki/runs/run-1/model.onnx"},
              "train": {"cities": OSLO, "store": "s3://locgen/cities"}}


def test_a_scheduled_training_submission(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    submission = plan("https://kubeflow.example.com/pipeline/", "train",
                      {**ON_CLUSTER["train"], "steps": 5000, "train_gpus": 4},
                      "retraining", "0 3 * * 1", token)
    assert submission.host == "https://kubeflow.example.com/pipeline"
    assert submission.package == PIPELINE_DIR / "train.yaml" and submission.pipeline_name == "locgen-train"
    assert submission.version_name.startswith("0.1.0-") and len(submission.version_name) == len("0.1.0-") + 12
    # A GPU count goes as a text: KFP's driver reads a parameterised accelerator count only from a string.
    assert submission.parameters == {**ON_CLUSTER["train"], "steps": 5000, "train_gpus": "4"}
    assert submission.cron == "0 0 3 * * 1"  # KFP's cron has seconds first
    assert submission.token == "secret-token" and submission.experiment == "retraining"


def test_the_token_comes_from_the_environment_and_the_cli_never_prints_it(monkeypatch, capsys):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert plan("http://localhost:8080", "generate", ON_CLUSTER["generate"], "locgen", None, None).token == "from-env"
    assert main(["submit", "--host", "http://localhost:8080", "--pipeline", "generate", "--param", "grid=3",
                 "--param", "store=s3://locgen/cities", "--param", "osm=s3://osm/oslo.osm.pbf", "--param",
                 f"model_uri={ON_CLUSTER['generate']['model_uri']}", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    described = json.loads(printed)
    assert described["token"] == "set" and "from-env" not in printed
    assert described["parameters"] == {"grid": 3, **ON_CLUSTER["generate"]} and described["cron"] is None


@pytest.mark.parametrize("arguments, message", [
    ({"host": "localhost"}, "--host 'localhost': give the Kubeflow Pipelines endpoint"),
    ({"parameters": {"colour": "red"}}, "unknown parameters ['colour'] for locgen-end-to-end"),
    ({"parameters": {"steps": "many"}}, 'parameter steps="many": give a whole number, like 0'),
    ({"parameters": {"preset": "huge"}}, "preset 'huge': unknown"),
    ({"schedule": "every monday"}, "--schedule 'every monday': give a cron expression"),
    ({"token_file": "missing"}, "--token-file .*missing: cannot read it"),
])
def test_bad_input_fails_before_any_request(tmp_path, arguments, message):
    values = {"host": "http://localhost:8080", "pipeline": "end-to-end", "experiment": "locgen", "schedule": None,
              "token_file": None, **arguments}
    values["parameters"] = {**ON_CLUSTER["end-to-end"], **values.get("parameters", {})}
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
        submission = plan(server.url, "generate", {"grid": 3, "city": "oslo", **ON_CLUSTER["generate"]}, "cities",
                          None, token)
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
    assert run["runtime_config"]["parameters"] == {"grid": 3, "city": "oslo", **ON_CLUSTER["generate"]}
    assert run["experiment_id"] == "experiment-1"
    assert {request.authorization for request in server.requests} == {"Bearer bearer-secret"}


def test_send_schedules_recurring_runs_of_an_existing_pipeline(monkeypatch):
    from kfp_server import KfpServer

    from pipeline.submit import send

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with KfpServer(pipelines={"locgen-train": "existing-7"}) as server:
        result = send(plan(server.url, "train", {**ON_CLUSTER["train"], "steps": 100}, "retraining", "0 3 * * 1",
                           None))
    assert result["recurring_run_id"] == "recurring-1" and result["cron"] == "0 0 3 * * 1"
    posts = {request.path.rsplit("/v2beta1/", 1)[1]: request for request in server.requests if request.method == "POST"}
    assert "pipelines/upload" not in posts  # a new version of the pipeline that is there
    assert posts["pipelines/upload_version"].query["pipelineid"] == "existing-7"
    job = posts["recurringruns"].body
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert job["runtime_config"]["parameters"] == {**ON_CLUSTER["train"], "steps": 100}


@pytest.mark.parametrize("pipeline, parameters, message", [
    ("train", {"store": "out/pipeline"}, "store 'out/pipeline': not readable from the pipeline's pods; give an s3:// "
                                         "URI (upload the file to the object store first)"),
    ("train", {"cities": [{**OSLO[0], "osm": "data/osm/oslo.osm.pbf"}]},
     "cities[0] (oslo): osm 'data/osm/oslo.osm.pbf': not readable from the pipeline's pods; give an s3:// URI of the "
     "extract, or overpass"),
    ("train", {"cities": [{**OSLO[0], "locations": ["osm:amenity=bicycle_rental", "csv:/home/me/bikes.csv"]}]},
     "cities[0] (oslo): locations 'csv:/home/me/bikes.csv': not readable from the pipeline's pods; give an s3:// or "
     "https:// URI (or osm: tags)"),
    ("train", {"init_from": "/home/me/generator.pt"}, "init_from '/home/me/generator.pt': not readable"),
    ("end-to-end", {"target_osm": "data/osm/kotka-karhula.osm.pbf"}, "target_osm 'data/osm/kotka-karhula.osm.pbf'"),
    ("generate", {"truth": ["positions/oslo.geojson"], "truth_bbox": "10.7,59.9,10.8,60.0"},
     "truth 'positions/oslo.geojson': not readable"),
    ("generate", {"model_uri": "model.onnx"}, "model_uri 'model.onnx': not readable"),
    ("generate", {"model_uri": "components/pretrained/tiny-helsinki.onnx"},  # the default: the bundled one, here
     "model_uri 'components/pretrained/tiny-helsinki.onnx': not readable from the pipeline's pods; give the s3:// "
     "URI of a model.onnx, or a training run's Model artifact URI (models/current.json's artifact_uri)"),
    ("generate", {"class_shares": "shares.json"}, "class_shares 'shares.json': not readable"),
])
def test_an_input_on_this_machine_is_refused_before_any_request(pipeline, parameters, message):
    with pytest.raises(LocgenError, match="^" + re.escape(message)):
        plan("http://localhost:8080", pipeline, {**ON_CLUSTER[pipeline], **parameters}, "locgen", None, None)
    # What a pod can read passes: the object store, the web, OSM tags, Overpass, the bundled model.
    plan("http://localhost:8080", "train", {**ON_CLUSTER["train"], "init_from": "bundled", "cities": [
        {**OSLO[0], "osm": "overpass", "locations": ["osm:amenity=bicycle_rental", "gbfs:https://gbfs.example/gbfs.json",
                                                     "s3://locgen/positions/oslo.csv"]}]}, "locgen", None, None)


def _posts(server) -> dict:
    return {request.path.rsplit("/v2beta1/", 1)[1]: request for request in server.requests if request.method == "POST"}


def test_a_second_submission_of_the_same_package_reuses_its_version(monkeypatch):
    """KFP refuses a version name twice: the version of this package (its name holds the hash) is reused."""
    from kfp_server import KfpServer

    from pipeline.submit import send

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with KfpServer() as server:
        submission = plan(server.url, "generate", ON_CLUSTER["generate"], "cities", None, None)
        first, second = send(submission), send(submission)
    assert first == second == {"run_id": "run-1", "link": f"{server.url}/#/runs/details/run-1"}
    uploads = [request.path for request in server.requests if request.path.endswith(("/upload", "/upload_version"))]
    assert uploads == ["/apis/v2beta1/pipelines/upload", "/apis/v2beta1/pipelines/upload_version"]  # once
    runs = [request.body["pipeline_version_reference"] for request in server.requests if request.path.endswith("/runs")]
    assert runs == [{"pipeline_id": "pipeline-1", "pipeline_version_id": "version-1"}] * 2


@pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")
def test_the_server_refuses_a_version_name_twice():
    """The test server's rule, as the real one: what a submission without the lookup would have met."""
    import kfp
    from kfp_server import KfpServer

    with KfpServer(pipelines={"locgen-train": "p-7"}, versions={"p-7": {"0.1.0-abc": "v-1"}}) as server:
        client = kfp.Client(host=server.url)
        with pytest.raises(Exception, match="409"):
            client.upload_pipeline_version(str(PIPELINE_DIR / "train.yaml"), "0.1.0-abc", pipeline_id="p-7")


@pytest.mark.parametrize("tag_name, refused", [("2.14.1", True), ("v2.4.0", True), ("2.15.0", False),
                                               ("2.17.0-rc.1", False), (None, False)])
def test_a_kfp_older_than_the_floor_is_refused_before_any_upload(monkeypatch, caplog, tag_name, refused):
    from kfp_server import KfpServer

    from pipeline.submit import send

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with KfpServer(tag_name=tag_name) as server:
        submission = plan(server.url, "generate", ON_CLUSTER["generate"], "cities", None, None)
        if refused:
            with pytest.raises(LocgenError, match=f"^--host {re.escape(server.url)}: Kubeflow Pipelines "
                                                  f"{re.escape(tag_name)}; locgen's pipelines need 2.15 or later "
                                                  r"\(Kubeflow 1.11 or later\)"):
                send(submission)
            assert not _posts(server)
        else:
            assert send(submission)["run_id"] == "run-1"
    assert ("does not say its version" in caplog.text) == (tag_name is None)


def test_a_multi_user_kubeflow_needs_a_namespace_and_gets_it_everywhere(monkeypatch, tmp_path):
    from kfp_server import KfpServer

    import pipeline.submit as submit

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setattr(submit, "POD_NAMESPACE_FILE", str(tmp_path / "no-pod"))  # not in a pod
    with KfpServer(multi_user=True) as server:
        with pytest.raises(LocgenError, match=r"a multi-user Kubeflow; give --namespace with your profile's namespace"):
            submit.send(plan(server.url, "train", ON_CLUSTER["train"], "retraining", None, None))
        assert not _posts(server)
        submit.send(plan(server.url, "train", ON_CLUSTER["train"], "retraining", None, None, namespace="team-a"))
    posts = _posts(server)
    assert posts["pipelines/upload"].query["namespace"] == "team-a"
    assert posts["experiments"].body["namespace"] == "team-a"
    lookups = [request for request in server.requests if request.method == "GET" and request.path.endswith(
        ("/pipelines", "/experiments"))]
    assert lookups and {request.query.get("namespace") for request in lookups} == {"team-a"}
    # In a pod, its own namespace is the default.
    (tmp_path / "namespace").write_text("team-b\n")
    monkeypatch.setattr(submit, "POD_NAMESPACE_FILE", str(tmp_path / "namespace"))
    assert plan("http://localhost:8080", "train", ON_CLUSTER["train"], "x", None, None).namespace == "team-b"


def test_in_a_pod_the_projected_service_account_token_is_sent(monkeypatch, tmp_path):
    """The retraining CronJob: no --token-file, no $KFP_TOKEN, the token the kubelet projects."""
    from kfp_server import KfpServer

    from pipeline.submit import SA_TOKEN_ENV, send

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with KfpServer(token="projected-sa-token") as server:
        submission = plan(server.url, "train", ON_CLUSTER["train"], "retraining", None, None)
        monkeypatch.setenv(SA_TOKEN_ENV, str(tmp_path / "none"))
        with pytest.raises(LocgenError, match=r"answered HTTP 401; give a token \(--token-file or \$KFP_TOKEN\)"):
            send(submission)
        (tmp_path / "token").write_text("projected-sa-token\n")
        monkeypatch.setenv(SA_TOKEN_ENV, str(tmp_path / "token"))
        assert send(submission)["run_id"] == "run-1"
    sent = {request.authorization for request in server.requests[1:]}  # the first was the refused health check
    assert sent == {"Bearer projected-sa-token"}


def test_the_cli_prints_only_its_summary_on_stdout(monkeypatch, capsys):
    """kfp.Client prints "details" links as it goes: they go to stderr, so the summary stays machine-readable."""
    from kfp_server import KfpServer

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with KfpServer() as server:
        assert main(["submit", "--host", server.url, "--pipeline", "generate", "--param", "store=s3://locgen/cities",
                     "--param", "osm=s3://osm/oslo.osm.pbf", "--param",
                     "model_uri=s3://locgen/cities/helsinki/runs/run-1/model.onnx"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["run_id"] == "run-1" and "Run details:" in err


@pytest.mark.parametrize("server_settings, says", [
    ({"down_after_healthz": True}, "the connection to Kubeflow Pipelines failed ("),
    ({"fails_with": 503}, "Kubeflow Pipelines answered HTTP 503 Service Unavailable ("),
])
def test_a_server_that_fails_after_its_health_check_is_one_line(monkeypatch, capsys, server_settings, says):
    from kfp_server import KfpServer

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with KfpServer(**server_settings) as server, pytest.raises(SystemExit) as exit_:
        main(["submit", "--host", server.url, "--pipeline", "generate", "--param", "store=s3://locgen/cities",
              "--param", "osm=s3://osm/oslo.osm.pbf", "--param",
              "model_uri=s3://locgen/cities/helsinki/runs/run-1/model.onnx"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("locgen: error: ")]
    assert exit_.value.code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"locgen: error: --host {server.url}: {says}")
    assert errors[0].endswith("); check the server, then submit again (a version uploaded already is reused)")


@pytest.mark.parametrize("tasks, promoted", [
    ([{"display_name": "compare with the current model", "state": "SUCCEEDED"},
      {"display_name": "promote the model", "state": "SUCCEEDED"}], True),
    ([{"display_name": "compare with the current model", "state": "SUCCEEDED"},
      {"display_name": "better than the current model", "state": "SKIPPED"}], False),
])
def test_wait_reports_the_run_end_and_the_promotion(monkeypatch, tasks, promoted):
    from kfp_server import KfpServer

    from pipeline.submit import send

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with KfpServer(task_details=tasks) as server:
        result = send(plan(server.url, "train", ON_CLUSTER["train"], "retraining", None, None, wait_s=3600))
    assert result["state"] == "SUCCEEDED" and result["promoted"] is promoted
    assert any(request.path == "/apis/v2beta1/runs/run-1" for request in server.requests)


def test_wait_fails_for_a_run_that_did_not_succeed(monkeypatch):
    from kfp_server import KfpServer

    from pipeline.submit import send

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with KfpServer(run_state="FAILED") as server:
        with pytest.raises(LocgenError, match=r"^run run-1 ended FAILED; its failing task and log are at http"):
            send(plan(server.url, "generate", ON_CLUSTER["generate"], "x", None, None, wait_s=60))
    with pytest.raises(LocgenError, match=r"^--wait 60: give the seconds to wait .* without --schedule"):
        plan("http://localhost:8080", "train", ON_CLUSTER["train"], "x", "0 3 * * 1", None, wait_s=60)
