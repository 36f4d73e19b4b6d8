"""Submit a compiled pipeline to a Kubeflow Pipelines endpoint: upload it as a new version, then start a
run or schedule recurring runs, and say where to watch it in the Kubeflow UI.

What is sent is decided first, as a `Submission`, from the arguments alone (checked here, before any
request); `send` then speaks to the endpoint through kfp.Client (tested against tests/kfp_server.py, a
loopback imitation of the KFP REST API). A token comes from a file or the
environment ($KFP_TOKEN), never from a command-line flag that would land in the shell's history; in a
pod, kfp.Client reads the projected ServiceAccount token at $KF_PIPELINES_SA_TOKEN_PATH by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from components import __version__
from components.core.errors import LocgenError
from pipeline.local import check_parameters, pipeline_file

TOKEN_ENV = "KFP_TOKEN"
PIPELINE_NAMES = {"train": "locgen-train", "generate": "locgen-generate", "end-to-end": "locgen-end-to-end"}
CRON_FIELD = r"[\d*/,\-A-Za-z?]+"


@dataclass(frozen=True)
class Submission:
    host: str
    pipeline_name: str  # the pipeline's name in Kubeflow: one per pipeline, with a version per upload
    package: Path  # the compiled YAML
    version_name: str  # locgen version and the package's hash: re-uploading the same package is refused by KFP
    parameters: dict
    experiment: str
    run_name: str
    cron: str | None  # KFP's six fields (seconds first); None: one run now
    token: str | None


def plan(host: str, pipeline: str, parameters: dict, experiment: str, schedule: str | None,
         token_file: Path | None) -> Submission:
    """What `send` would send; every input checked."""
    from pipeline.pipelines import build_pipelines

    pipelines = build_pipelines()
    if not re.match(r"^https?://[^/\s]+", host or ""):
        raise LocgenError(f"--host {host!r}: give the Kubeflow Pipelines endpoint, e.g. http://localhost:8080 or "
                          "https://kubeflow.example.com/pipeline")
    if pipeline not in pipelines:
        raise LocgenError(f"--pipeline {pipeline}: unknown; give one of {', '.join(pipelines)}")
    parameters = check_parameters(pipelines[pipeline], parameters, local_files=False)
    package = pipeline_file(pipeline)
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
    return Submission(host=host.rstrip("/"), pipeline_name=PIPELINE_NAMES[pipeline], package=package,
                      version_name=f"{__version__}-{digest}", parameters=parameters, experiment=experiment,
                      run_name=f"{PIPELINE_NAMES[pipeline]} {__version__}", cron=_cron(schedule),
                      token=_token(token_file))


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


def send(submission: Submission) -> dict:
    """Upload the version, start or schedule the run; returns its id and its link in the Kubeflow UI."""
    import kfp

    with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": our pipelines are v2
        warnings.filterwarnings("ignore", message="This client only works", category=FutureWarning)
        client = kfp.Client(host=submission.host, existing_token=submission.token)
    package = str(submission.package)
    pipeline_id = client.get_pipeline_id(submission.pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package, pipeline_name=submission.pipeline_name).pipeline_id
    version = client.upload_pipeline_version(package, submission.version_name, pipeline_id=pipeline_id)
    experiment = client.create_experiment(submission.experiment)
    common = dict(experiment_id=experiment.experiment_id, job_name=submission.run_name,
                  params=submission.parameters, pipeline_id=pipeline_id, version_id=version.pipeline_version_id)
    if submission.cron:
        job = client.create_recurring_run(cron_expression=submission.cron, **common)
        return {"recurring_run_id": job.recurring_run_id, "cron": submission.cron,
                "link": f"{submission.host}/#/recurringrun/details/{job.recurring_run_id}"}
    run = client.run_pipeline(**common)
    return {"run_id": run.run_id, "link": f"{submission.host}/#/runs/details/{run.run_id}"}


def describe(submission: Submission) -> dict:
    """The submission as it would be sent (the token left out)."""
    return {"host": submission.host, "pipeline": submission.pipeline_name, "package": str(submission.package),
            "version": submission.version_name, "parameters": json.loads(json.dumps(submission.parameters)),
            "experiment": submission.experiment, "run_name": submission.run_name, "cron": submission.cron,
            "token": "set" if submission.token else "none"}
