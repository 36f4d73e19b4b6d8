"""Submit a compiled pipeline to a Kubeflow Pipelines endpoint: upload it as a version (or reuse the version of
that package, uploaded before), then start a run or schedule recurring runs, and say where to watch it in the
Kubeflow UI.

What is sent is decided first, as a `Submission`, from the arguments alone (checked here, before any
request: every input the pods read must be an s3:// or web URI); `send` then asks the server's health
(version floor, multi-user mode) and speaks to it through kfp.Client (tested against
tests/kfp_server.py, a loopback imitation of the KFP REST API that enforces what the real one does). A
token comes from a file or the environment ($KFP_TOKEN), never from a command-line flag that would land
in the shell's history; in a pod, without either, the projected ServiceAccount token at
$KF_PIPELINES_SA_TOKEN_PATH is handed to kfp.Client (which, given a host, would not read it). On a
multi-user Kubeflow the pipeline, experiment and runs go in `--namespace` (in a pod: its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from components import __version__
from components.core.errors import LocgenError, one_line
from components.sources.locations import split_spec
from pipeline.local import check_parameters, pipeline_defaults, pipeline_file
from pipeline.trainjob import POD_NAMESPACE_FILE

TOKEN_ENV = "KFP_TOKEN"
# In a pod: the projected ServiceAccount token (kfp.Client's own default path and variable), and the pod's namespace.
SA_TOKEN_ENV, SA_TOKEN_PATH = "KF_PIPELINES_SA_TOKEN_PATH", "/var/run/secrets/kubeflow/pipelines/token"
PIPELINE_NAMES = {"train": "locgen-train", "generate": "locgen-generate", "end-to-end": "locgen-end-to-end"}
CRON_FIELD = r"[\d*/,\-A-Za-z?]+"
# kfp-kubernetes 2.17 writes secretAsEnv.optional (KFP 2.15, Kubeflow 1.11); artifact fan-in needs 2.14.
KFP_FLOOR = (2, 15)
HEALTHZ_TIMEOUT_S = 30
# A pod reads data from the object store (or the web, for location feeds), never from this machine.
OBJECT_STORE_PARAMETERS = ("store", "init_from", "class_shares")  # besides "" (none) and "bundled"
# What KFP's launcher downloads an imported artifact from: the object store, or KFP's own store (a Model
# artifact's URI, minio:// or gs://).
MODEL_SCHEMES = ("s3://", "minio://", "gs://")
OSM_PARAMETERS = ("osm", "target_osm")  # an s3:// extract, or "overpass"
LOCATION_PARAMETERS = ("truth",)  # location specs, as each city's "locations"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    host: str
    pipeline_name: str  # the pipeline's name in Kubeflow: one per pipeline, with a version per upload
    package: Path  # the compiled YAML
    version_name: str  # locgen version and the package's hash: one version per package, reused when it is there
    parameters: dict
    experiment: str
    run_name: str
    cron: str | None  # KFP's six fields (seconds first); None: one run now
    token: str | None
    wait_s: int | None  # wait this long for the run's end and report it; None: do not wait
    namespace: str | None  # the profile's namespace on a multi-user Kubeflow; None: single-user


def plan(host: str, pipeline: str, parameters: dict, experiment: str, schedule: str | None,
         token_file: Path | None, namespace: str | None = None, wait_s: int | None = None) -> Submission:
    """What `send` would send; every input checked (namespace None: the pod's own, when this runs in one)."""
    from pipeline.pipelines import build_pipelines

    pipelines = build_pipelines()
    if not re.match(r"^https?://[^/\s]+", host or ""):
        raise LocgenError(f"--host {host!r}: give the Kubeflow Pipelines endpoint, e.g. http://localhost:8080 or "
                          "https://kubeflow.example.com/pipeline")
    if pipeline not in pipelines:
        raise LocgenError(f"--pipeline {pipeline}: unknown; give one of {', '.join(pipelines)}")
    if wait_s is not None and (wait_s <= 0 or schedule is not None):
        raise LocgenError(f"--wait {wait_s}: give the seconds to wait for a run's end (above 0), without --schedule "
                          "(a schedule starts runs later)")
    parameters = check_parameters(pipelines[pipeline], parameters, local_files=False)
    check_cluster_inputs(pipelines[pipeline], parameters)
    package = pipeline_file(pipeline)
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
    return Submission(host=host.rstrip("/"), pipeline_name=PIPELINE_NAMES[pipeline], package=package,
                      version_name=f"{__version__}-{digest}", parameters=parameters, experiment=experiment,
                      run_name=f"{PIPELINE_NAMES[pipeline]} {__version__}", cron=_cron(schedule),
                      token=_token(token_file), namespace=namespace or _pod_namespace(), wait_s=wait_s)


def check_cluster_inputs(pipeline, given: dict) -> None:
    """Every input the pods read must be reachable from them: the store and models on s3://, OSM extracts on
    s3:// (or Overpass), location files on s3:// or the web; a path on this machine (as the local defaults
    are) is refused here, naming the parameter, rather than failing in a pod."""
    parameters = {**pipeline_defaults(pipeline), **given}
    for name in OBJECT_STORE_PARAMETERS:
        value = parameters.get(name)
        if value and value != "bundled" and not value.startswith("s3://"):
            _refuse(name, value, "an s3:// URI")
    if "model_uri" in parameters and not parameters["model_uri"].startswith(MODEL_SCHEMES):
        _refuse("model_uri", parameters["model_uri"], "the s3:// URI of a model.onnx, or a training run's Model "
                "artifact URI (models/current.json's artifact_uri)")
    for name in OSM_PARAMETERS:
        if name in parameters:
            _check_cluster_osm(name, parameters[name])
    for name in LOCATION_PARAMETERS:
        for spec in parameters.get(name) or []:
            _check_cluster_location(name, spec)
    for index, city in enumerate(parameters.get("cities") or []):
        label = f"cities[{index}] ({city.get('city')})"
        _check_cluster_osm(f"{label}: osm", city["osm"])
        for spec in city.get("locations") or []:
            _check_cluster_location(f"{label}: locations", spec)


def _check_cluster_osm(name: str, value: str) -> None:
    if value != "overpass" and not value.startswith("s3://"):
        _refuse(name, value, "an s3:// URI of the extract, or overpass")


def _check_cluster_location(name: str, spec: str) -> None:
    kind, location = split_spec(spec)
    if kind == "osm" or location.startswith(("s3://", "https://", "http://")):
        return  # OSM tags are read from the city's OSM data
    _refuse(name, spec, "an s3:// or https:// URI (or osm: tags)")


def _refuse(name: str, value: str, wanted: str) -> None:
    raise LocgenError(f"{name} {value!r}: not readable from the pipeline's pods; give {wanted} (upload the file to "
                      "the object store first)")


def _pod_namespace() -> str | None:
    """The namespace of the pod this runs in (the retraining CronJob's); None outside a pod."""
    try:
        return Path(POD_NAMESPACE_FILE).read_text().strip() or None
    except OSError:
        return None


def _cron(schedule: str | None) -> str | None:
    """A standard five-field cron expression (or KFP's six, with seconds) as KFP's six fields."""
    if schedule is None:
        return None
    fields = schedule.split()
    if len(fields) not in (5, 6) or not all(re.fullmatch(CRON_FIELD, field) for field in fields):
        raise LocgenError(f"--schedule {schedule!r}: give a cron expression, e.g. '0 3 * * 1' (Mondays at 03:00)")
    return " ".join(["0", *fields] if len(fields) == 5 else fields)


def _token(token_file: Path | None) -> str | None:
    if token_file is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        token = Path(token_file).read_text().strip()
    except OSError as error:
        raise LocgenError(f"--token-file {token_file}: cannot read it ({error.strerror}); give a readable file "
                          f"holding the token, or set ${TOKEN_ENV}") from None
    if not token:
        raise LocgenError(f"--token-file {token_file}: empty; put the token in it, or set ${TOKEN_ENV}")
    return token


def _service_account_token_path() -> Path | None:
    """The projected ServiceAccount token kfp.Client would read in a pod, when it is there."""
    path = Path(os.environ.get(SA_TOKEN_ENV) or SA_TOKEN_PATH)
    return path if path.is_file() else None


def send(submission: Submission) -> dict:
    """Check the server, upload the version unless it is there, start or schedule the run; returns its id and its
    link in the Kubeflow UI (kfp.Client's own "details" lines go to stderr: stdout is the summary)."""
    import kfp_server_api
    import urllib3

    again = "check the server, then submit again (a version uploaded already is reused)"
    with contextlib.redirect_stdout(sys.stderr):
        try:
            return _send(submission)
        except urllib3.exceptions.HTTPError as error:  # refused, reset or timed out after the health check
            reason = getattr(error, "reason", None) or (error.args[-1] if error.args else error)  # the cause alone
            raise LocgenError(f"--host {submission.host}: the connection to Kubeflow Pipelines failed "
                              f"({one_line(reason, 200)}); {again}") from None
        except kfp_server_api.ApiException as error:
            raise LocgenError(f"--host {submission.host}: Kubeflow Pipelines answered HTTP {error.status} "
                              f"{error.reason} ({one_line(error.body or '', 200)}); {again}") from None


def _send(submission: Submission) -> dict:
    import kfp

    sa_token = None if submission.token else _service_account_token_path()
    check_server(submission, submission.token or (sa_token.read_text().strip() if sa_token else None))
    # With an explicit host, kfp.Client reads no token by itself: the projected one is handed to it.
    credentials = kfp.client.ServiceAccountTokenVolumeCredentials(str(sa_token)) if sa_token else None
    with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": our pipelines are v2
        warnings.filterwarnings("ignore", message="This client only works", category=FutureWarning)
        client = kfp.Client(host=submission.host, existing_token=submission.token, credentials=credentials,
                            namespace=submission.namespace or "kubeflow")
    namespace = submission.namespace
    pipeline_id = _pipeline_id(client, submission.pipeline_name, namespace)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(submission.package), pipeline_name=submission.pipeline_name,
                                             namespace=namespace).pipeline_id
    version_id = _version_id(client, pipeline_id, submission)
    experiment = client.create_experiment(submission.experiment, namespace=namespace)
    common = dict(experiment_id=experiment.experiment_id, job_name=submission.run_name,
                  params=submission.parameters, pipeline_id=pipeline_id, version_id=version_id)
    if submission.cron:
        job = client.create_recurring_run(cron_expression=submission.cron, **common)
        return {"recurring_run_id": job.recurring_run_id, "cron": submission.cron,
                "link": f"{submission.host}/#/recurringrun/details/{job.recurring_run_id}"}
    run = client.run_pipeline(**common)
    result = {"run_id": run.run_id, "link": f"{submission.host}/#/runs/details/{run.run_id}"}
    return result if submission.wait_s is None else {**result, **_wait(client, run.run_id, submission)}


def _wait(client, run_id: str, submission: Submission) -> dict:
    """The run's end: its state and, for a training run, whether it promoted its model (the promotion task
    ran: the branch `better than the current model` was taken). A run that did not succeed is an error."""
    from pipeline.pipelines import TASKS

    try:
        run = client.wait_for_run_completion(run_id, timeout=submission.wait_s)
    except TimeoutError:
        raise LocgenError(f"--wait {submission.wait_s}: run {run_id} still running after {submission.wait_s} s; "
                          f"watch it at {submission.host}/#/runs/details/{run_id}, or wait longer") from None
    if str(run.state).upper() != "SUCCEEDED":
        raise LocgenError(f"run {run_id} ended {run.state}; its failing task and log are at "
                          f"{submission.host}/#/runs/details/{run_id}")
    tasks = {task.display_name: str(task.state).upper() for task in (run.run_details.task_details or [])} \
        if run.run_details else {}
    ended = {"state": "SUCCEEDED"}
    if TASKS["decide_promotion"][0] in tasks:
        ended["promoted"] = tasks.get(TASKS["promote_model"][0]) == "SUCCEEDED"
    return ended


def check_server(submission: Submission, token: str | None) -> dict:
    """The server's healthz: refuse a KFP older than KFP_FLOOR (when it says its version), and a multi-user one
    without a namespace; returns the answer."""
    url = f"{submission.host}/apis/v2beta1/healthz"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=HEALTHZ_TIMEOUT_S) as answer:
            health = json.loads(answer.read(1 << 20))
    except urllib.error.HTTPError as error:
        fix = "give a token (--token-file or $KFP_TOKEN)" if error.code in (401, 403) else "check --host"
        raise LocgenError(f"--host {submission.host}: {url} answered HTTP {error.code}; {fix}") from None
    except (OSError, ValueError) as error:
        raise LocgenError(f"--host {submission.host}: no Kubeflow Pipelines health answer at {url} "
                          f"({one_line(error, 200)}); check --host") from None
    version = health.get("tag_name")
    if version is None:
        log.warning("%s does not say its version; locgen's pipelines need Kubeflow Pipelines %s or later "
                    "(Kubeflow 1.11)", submission.host, ".".join(map(str, KFP_FLOOR)))
    elif _release(version) < KFP_FLOOR:
        raise LocgenError(f"--host {submission.host}: Kubeflow Pipelines {version}; locgen's pipelines need "
                          f"{'.'.join(map(str, KFP_FLOOR))} or later (Kubeflow 1.11 or later): upgrade it "
                          "(OPERATORS.md, Versions)")
    if health.get("multi_user") and not submission.namespace:
        raise LocgenError(f"--host {submission.host}: a multi-user Kubeflow; give --namespace with your profile's "
                          "namespace (e.g. kubeflow-user-example-com)")
    return health


def _release(version: str) -> tuple[int, ...]:
    """'2.15.0', 'v2.4.1-rc.1' -> (2, 15, 0), (2, 4, 1); an unreadable version reads as the floor (not refused)."""
    numbers = re.match(r"v?(\d+)\.(\d+)", version.strip())
    return tuple(int(number) for number in numbers.groups()) if numbers else KFP_FLOOR


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _pipeline_id(client, name: str, namespace: str | None) -> str | None:
    found = client.list_pipelines(filter=_name_filter(name), namespace=namespace).pipelines or []
    return found[0].pipeline_id if found else None


def _version_id(client, pipeline_id: str, submission: Submission) -> str:
    """The version of this package: the one of its name when it was uploaded before (KFP refuses a name twice, and
    the name holds the package's hash), else a new upload."""
    found = client.list_pipeline_versions(pipeline_id, filter=_name_filter(submission.version_name)).pipeline_versions
    if found:
        return found[0].pipeline_version_id
    return client.upload_pipeline_version(str(submission.package), submission.version_name,
                                          pipeline_id=pipeline_id).pipeline_version_id


def describe(submission: Submission) -> dict:
    """The submission as it would be sent (the token left out)."""
    return {"host": submission.host, "pipeline": submission.pipeline_name, "package": str(submission.package),
            "version": submission.version_name, "parameters": json.loads(json.dumps(submission.parameters)),
            "experiment": submission.experiment, "run_name": submission.run_name, "cron": submission.cron,
            "namespace": submission.namespace, "wait_s": submission.wait_s,
            "token": "set" if submission.token else "none"}
