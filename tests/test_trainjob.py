"""Multi-node training (pipeline.trainjob): the TrainJob and PyTorchJob it creates are valid against their CRDs'
schemas (../shared/crds), strictly, and launching one against a loopback Kubernetes API server (tests/kube_server.py)
creates it once, attaches to it on a retry, falls back to the Training Operator, and fails in one line."""

import dataclasses
import functools
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import PROJECT_ROOT
from google.protobuf import json_format
from kube_server import KubeServer

from components.core.errors import LocgenError
from pipeline.pipelines import build_pipelines
from pipeline.steps import distributed_training
from pipeline.trainjob import (
    MAX_JOB_NAME,
    MAX_NODES,
    RUNTIME,
    RUNTIME_JOB,
    DistributedTraining,
    in_cluster_client,
    job_labels,
    job_name,
    launch_and_wait,
    pytorchjob_manifest,
    trainjob_manifest,
)

CRDS = PROJECT_ROOT.parent / "shared" / "crds"
TRAINJOB_CRD = "trainer-v2.1.0.trainer.kubeflow.org_trainjobs.yaml"
RUNTIME_CRD = "trainer-v2.1.0.trainer.kubeflow.org_clustertrainingruntimes.yaml"
RUNTIME_FILE = "trainer-v2.1.0.runtime-torch-distributed.yaml"
PYTORCHJOB_CRD = "training-operator-v1.9.2.kubeflow.org_pytorchjobs.yaml"
RUN_ID = "0b5d2f3e-7c1a-4e8b-9f6d-2a4c8e1b3d5f"  # a KFP run id
NAME = f"locgen-{RUN_ID}"
TRAIN_ARGUMENTS = ["--data", "s3://locgen/helsinki/tiles", "--out", f"s3://locgen/helsinki/runs/{RUN_ID}/train",
                   "--preset", "fastcut", "--steps", "400000", "--batch-size", "1"]
TRAINER = "trainer.kubeflow.org/v1alpha1"
OPERATOR = "kubeflow.org/v1"
TRAINJOBS = f"/apis/{TRAINER}/namespaces/team-a/trainjobs"
PYTORCHJOBS = f"/apis/{OPERATOR}/namespaces/team-a/pytorchjobs"
CREATED = {"type": "Created", "status": "True", "reason": "JobsCreationSucceeded",
           "message": "Succeeded to create Jobs"}


@functools.cache
def _pipeline_job() -> dict:
    """The pods' settings that a train pipeline, compiled for a registry and GPU nodes, gives its train task."""
    pipelines = build_pipelines(registry="registry.example.com/locgen",
                                gpu_node_selector={"nvidia.com/gpu.present": "true"})
    tasks = json_format.MessageToDict(pipelines["train"].pipeline_spec)["root"]["dag"]["tasks"]
    return tasks["train-generator"]["inputs"]["parameters"]["job"]["runtimeValue"]["constant"]


def _spec(**changes) -> DistributedTraining:
    """What train_step passes for 3 nodes of 4 GPUs each, from the compiled pipeline's settings."""
    spec = distributed_training(_pipeline_job(), RUN_ID, "team-a", nodes=3, gpus_per_node=4,
                                train_arguments=TRAIN_ARGUMENTS)
    return dataclasses.replace(spec, **changes)


CPU_SPEC = dict(gpus_per_node=0, cpu_request="1", cpu_limit="4", memory_request="2G", memory_limit="8G")


# --- the manifests against the CRDs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def crds() -> Path:
    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} is absent (the Kubeflow CRDs the manifests are checked against are not shipped)")
    return CRDS


def _crd(crds: Path, file: str) -> dict:
    return yaml.safe_load((crds / file).read_text())


def _strict(schema):
    """The schema refusing fields it does not name: the API server would drop them silently (pruning), and a
    misspelt field would train without its setting."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and \
            not schema.get("x-kubernetes-preserve-unknown-fields"):
        strict["additionalProperties"] = False
    return strict


def _validate(crds: Path, file: str, document: dict) -> None:
    """Validate `document` against the CRD's schema of its version, and its name against the CRD's own rules."""
    crd = _crd(crds, file)
    assert document["kind"] == crd["spec"]["names"]["kind"]
    assert document["apiVersion"] == f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
    (version,) = [version for version in crd["spec"]["versions"] if version["served"]]
    schema = version["schema"]["openAPIV3Schema"]
    jsonschema.Draft7Validator(_strict(schema)).validate(document)
    for rule in schema.get("x-kubernetes-validations", []):  # the CEL rules on the name (TrainJob)
        pattern = re.fullmatch(r"self\.metadata\.name\.matches\('(.+)'\)", rule["rule"])
        size = re.fullmatch(r"size\(self\.metadata\.name\) <= (\d+)", rule["rule"])
        assert pattern or size, f"a rule this test does not evaluate: {rule['rule']}"
        assert re.fullmatch(pattern[1], document["metadata"]["name"]) if pattern else \
            len(document["metadata"]["name"]) <= int(size[1]), rule["message"]


@pytest.mark.parametrize("changes", [{}, CPU_SPEC, {"nodes": MAX_NODES, "gpu_node_selector": {}}])
def test_the_trainjob_and_the_pytorchjob_are_valid_against_their_crds(crds, changes):
    _validate(crds, TRAINJOB_CRD, trainjob_manifest(_spec(**changes)))
    _validate(crds, PYTORCHJOB_CRD, pytorchjob_manifest(_spec(**changes)))


def _misspelt(document: dict) -> dict:
    document["spec"]["podTemplateOverrides"][0]["spec"]["nodeSelecter"] = {"gpu": "true"}
    return document


@pytest.mark.parametrize("file, broken", [
    (TRAINJOB_CRD, lambda document: {**document, "spec": {**document["spec"], "runtimeRef": {}}}),  # no name
    (TRAINJOB_CRD, lambda document: document["spec"]["trainer"].update(numNodes="three") or document),
    (TRAINJOB_CRD, _misspelt),  # an unknown field
    (TRAINJOB_CRD, lambda document: document["metadata"].update(name="Locgen_Run") or document),  # the CEL rule
    (PYTORCHJOB_CRD, lambda document: document["spec"].pop("pytorchReplicaSpecs") and document),
])
def test_a_broken_manifest_is_refused(crds, file, broken):
    manifest = (trainjob_manifest if file == TRAINJOB_CRD else pytorchjob_manifest)(_spec())
    _validate(crds, file, manifest)
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        _validate(crds, file, broken(manifest))


def test_the_trainjob_runs_on_the_torch_distributed_runtime_which_is_valid(crds):
    runtime = _crd(crds, RUNTIME_FILE)
    _validate(crds, RUNTIME_CRD, runtime)
    assert trainjob_manifest(_spec())["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org", "kind": runtime["kind"], "name": runtime["metadata"]["name"]}
    assert runtime["metadata"]["name"] == RUNTIME
    # The Torch plugin sets the PET_* variables for a runtime with a torch policy, in the container `node` of the
    # job whose pods are the trainer's (the ancestor label): the container podTemplateOverrides name.
    assert "torch" in runtime["spec"]["mlPolicy"]
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == RUNTIME_JOB
    assert job["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    assert [container["name"] for container in job["template"]["spec"]["template"]["spec"]["containers"]] == [
        RUNTIME_JOB]


# --- what the manifests say ----------------------------------------------------------------------------

LABELS = {"app.kubernetes.io/part-of": "locgen", "app.kubernetes.io/component": "train", "locgen/run-id": RUN_ID}
TORCHRUN = ["python", "-m", "torch.distributed.run", "-m", "locgen", "train"]
SECRET_ENV = [{"name": name, "valueFrom": {"secretKeyRef": {"name": "locgen-object-store", "key": name}}}
              for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")]
GPU_RESOURCES = {"requests": {"cpu": "4", "memory": "16G"},
                 "limits": {"cpu": "8", "memory": "32G", "nvidia.com/gpu": "4"}}
GPU_PLACEMENT = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                 "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
                 "nodeSelector": {"nvidia.com/gpu.present": "true"}}
NO_SIDECAR = {"sidecar.istio.io/inject": "false"}


def test_the_trainjob_runs_torchrun_on_every_gpu_node():
    assert trainjob_manifest(_spec()) == {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": NAME, "namespace": "team-a", "labels": LABELS},
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                           "name": "torch-distributed"},
            "labels": LABELS,
            "trainer": {"image": "registry.example.com/locgen/train:0.1.0", "command": TORCHRUN,
                        "args": TRAIN_ARGUMENTS, "env": SECRET_ENV, "numNodes": 3, "numProcPerNode": 4,
                        "resourcesPerNode": GPU_RESOURCES},
            "podTemplateOverrides": [{
                "targetJobs": [{"name": "node"}],
                "metadata": {"labels": LABELS, "annotations": NO_SIDECAR},
                "spec": {**GPU_PLACEMENT,
                         "containers": [{"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}]},
            }],
        },
    }


def test_a_cpu_trainjob_runs_one_gloo_process_a_node_anywhere():
    manifest = trainjob_manifest(_spec(**CPU_SPEC))
    assert manifest["spec"]["trainer"]["numProcPerNode"] == 1  # "auto" would start one a CPU core
    assert manifest["spec"]["trainer"]["resourcesPerNode"] == {"requests": {"cpu": "1", "memory": "2G"},
                                                               "limits": {"cpu": "4", "memory": "8G"}}
    assert manifest["spec"]["podTemplateOverrides"] == [
        {"targetJobs": [{"name": "node"}], "metadata": {"labels": LABELS, "annotations": NO_SIDECAR}}]


def test_the_pytorchjob_has_a_master_and_workers_alike():
    manifest = pytorchjob_manifest(_spec())
    assert manifest["metadata"] == {"name": NAME, "namespace": "team-a", "labels": LABELS}
    assert manifest["spec"]["nprocPerNode"] == "4"
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert {role: (spec["replicas"], spec["restartPolicy"]) for role, spec in replicas.items()} == {
        "Master": (1, "Never"), "Worker": (2, "Never")}
    assert replicas["Master"]["template"] == replicas["Worker"]["template"]
    pod = replicas["Master"]["template"]
    assert pod["metadata"] == {"labels": LABELS, "annotations": NO_SIDECAR}
    assert {key: pod["spec"][key] for key in GPU_PLACEMENT} == GPU_PLACEMENT
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "pytorch"  # where the operator sets PET_*
    assert (container["command"], container["args"], container["env"]) == (TORCHRUN, TRAIN_ARGUMENTS, SECRET_ENV)
    assert container["resources"] == GPU_RESOURCES
    assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]  # PET_MASTER_PORT's source
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]


def test_a_cpu_pytorchjob_has_no_gpu_placement():
    pod = pytorchjob_manifest(_spec(**CPU_SPEC))["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert not {"tolerations", "volumes", "nodeSelector"} & set(pod)
    assert "volumeMounts" not in pod["containers"][0]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("manifest", [trainjob_manifest, pytorchjob_manifest])
def test_no_pod_fixes_its_user_so_restricted_clusters_can_assign_one(manifest):
    assert "runAsUser" not in yaml.safe_dump(manifest(_spec()))


# --- names and settings --------------------------------------------------------------------------------

def test_a_run_id_names_its_job_the_same_at_every_try():
    assert job_name(RUN_ID) == job_name(RUN_ID) == NAME
    assert job_labels(RUN_ID) == LABELS


@pytest.mark.parametrize("run_id", ["Run 7 of " * 10, "ABC", "abc_", "x" * 80])
def test_any_run_id_gives_a_dns_label_that_jobset_accepts(run_id):
    name = job_name(run_id)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= MAX_JOB_NAME
    assert name.startswith("locgen-") and name != job_name(run_id.upper() + "-")  # distinct ids, distinct names


def test_the_name_limit_leaves_jobset_pod_names_within_63_characters():
    # JobSet's webhook checks "<jobset>-<replicated job>-<job index>-<pod index>-<5 random>" of the last pod.
    assert MAX_JOB_NAME == 46
    assert len(f"{'x' * MAX_JOB_NAME}-node-0-{MAX_NODES - 1}-abcde") == 63


def test_a_run_id_without_letters_or_digits_is_refused():
    with pytest.raises(LocgenError, match=r"^run id '--': give one with letters or digits"):
        job_name("--")


@pytest.mark.parametrize("changes, message", [
    ({"nodes": 1}, "train_nodes 1: a distributed training takes 2 to 1000 nodes (train_nodes 1 trains in the task's "
                   "own pod)"),
    ({"gpus_per_node": -1}, "train_gpus -1: give 0 (CPU) or more GPUs per node"),
    ({"name": "locgen_run"}, "training job name 'locgen_run': give a DNS-1035 label of at most 46 characters "
                             "(job_name makes one from the run id)"),
])
def test_a_bad_setting_is_one_line(changes, message):
    with pytest.raises(LocgenError) as raised:
        _spec(**changes)
    assert str(raised.value) == message


def test_a_pipeline_compiled_without_gpus_trains_its_job_on_cpus_only():
    tasks = json_format.MessageToDict(build_pipelines(gpus=False)["train"].pipeline_spec)["root"]["dag"]["tasks"]
    job = tasks["train-generator"]["inputs"]["parameters"]["job"]["runtimeValue"]["constant"]
    assert (job["gpu_resource"], job["gpu_node_selector"]) == ("", {})
    assert trainjob_manifest(distributed_training(job, RUN_ID, "team-a", nodes=2, gpus_per_node=0,
                                                  train_arguments=TRAIN_ARGUMENTS))["spec"]["trainer"]["numNodes"] == 2
    with pytest.raises(LocgenError) as raised:
        distributed_training(job, RUN_ID, "team-a", nodes=2, gpus_per_node=1, train_arguments=TRAIN_ARGUMENTS)
    assert str(raised.value) == ("train_gpus 1: this pipeline was compiled for a cluster without GPUs (locgen "
                                 "compile --cpu-only); give train_gpus 0, or compile it with GPUs")


# --- launching against the API server ------------------------------------------------------------------

def _launch(server: KubeServer, spec: DistributedTraining | None = None) -> tuple[dict, list, list]:
    sleeps, logs = [], []
    summary = launch_and_wait(spec or _spec(), server.api_client(), sleep=sleeps.append, poll_s=30, log=logs.append)
    return summary, sleeps, logs


def _calls(server: KubeServer) -> list[tuple[str, str]]:
    return [(received.method, received.path) for received in server.requests]


def test_a_trainjob_is_created_once_and_waited_for():
    complete = {"type": "Complete", "status": "True", "reason": "JobSetCompleted", "message": "jobset completed"}
    with KubeServer(served={TRAINER: ["trainjobs"]}, statuses=[{}, {"conditions": [CREATED]},
                                                               {"conditions": [CREATED, complete]}]) as server:
        summary, sleeps, logs = _launch(server)
    assert summary == {"kind": "TrainJob", "name": NAME, "namespace": "team-a", "nodes": 3}
    assert server.created() == [trainjob_manifest(_spec())]
    assert _calls(server) == [("GET", f"/apis/{TRAINER}"), ("POST", TRAINJOBS)] + [("GET", f"{TRAINJOBS}/{NAME}")] * 3
    assert sleeps == [30, 30]
    assert logs == [f"train: created TrainJob team-a/{NAME} (3 nodes, 4 processes each)",
                    f"train: TrainJob team-a/{NAME}: waiting for its controller",
                    f"train: TrainJob team-a/{NAME}: Created",
                    f"train: TrainJob team-a/{NAME} has completed"]


def test_a_failed_trainjob_fails_the_task_with_its_reason():
    failed = {"type": "Failed", "status": "True", "reason": "FailedJobs",
              "message": "jobset failed due to one or more job failures\n(node-0: BackoffLimitExceeded)"}
    with KubeServer(served={TRAINER: ["trainjobs"]}, statuses=[{"conditions": [CREATED]},
                                                               {"conditions": [CREATED, failed]}]) as server:
        with pytest.raises(LocgenError) as raised:
            _launch(server)
    assert str(raised.value) == (
        f"train: TrainJob team-a/{NAME} failed: FailedJobs: jobset failed due to one or more job failures (node-0: "
        f"BackoffLimitExceeded); see kubectl -n team-a describe trainjob {NAME}, and its pods' logs: kubectl -n "
        f"team-a logs -l locgen/run-id={RUN_ID} --prefix --tail 50")


def _existing(status: dict) -> dict:
    """The run's TrainJob as an earlier try of the task left it."""
    return {("trainjobs", "team-a", NAME): {**trainjob_manifest(_spec()), "status": status}}


def test_a_retried_task_attaches_to_the_job_of_its_run():
    running = {"conditions": [CREATED]}
    complete = {"conditions": [CREATED, {"type": "Complete", "status": "True", "reason": "JobSetCompleted"}]}
    with KubeServer(served={TRAINER: ["trainjobs"]}, statuses=[running, running, complete],
                    objects=_existing(running)) as server:
        summary, sleeps, logs = _launch(server)
    assert summary["kind"] == "TrainJob"
    # One create, refused (409); then the existing job is read: running (twice), then complete.
    assert _calls(server) == [("GET", f"/apis/{TRAINER}"), ("POST", TRAINJOBS)] + [("GET", f"{TRAINJOBS}/{NAME}")] * 3
    assert logs[0] == f"train: attached to TrainJob team-a/{NAME}, created by an earlier try of this task"
    assert sleeps == [30]


def test_a_retried_task_replaces_a_failed_job_of_its_run():
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "node lost"}]}
    complete = {"conditions": [{"type": "Complete", "status": "True", "reason": "JobSetCompleted"}]}
    with KubeServer(served={TRAINER: ["trainjobs"]}, statuses=[failed, complete],
                    objects=_existing(failed)) as server:
        _, sleeps, logs = _launch(server)
    job = f"{TRAINJOBS}/{NAME}"
    assert _calls(server) == [("GET", f"/apis/{TRAINER}"), ("POST", TRAINJOBS), ("GET", job), ("DELETE", job),
                              ("GET", job), ("POST", TRAINJOBS), ("GET", job)]
    assert server.created() == [trainjob_manifest(_spec())] * 2
    assert logs[:2] == [f"train: TrainJob team-a/{NAME} of this run failed before (FailedJobs): replacing it",
                        f"train: created TrainJob team-a/{NAME} again"]
    assert sleeps == []


def test_without_kubeflow_trainer_a_pytorchjob_trains():
    succeeded = {"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded",
                 "message": f"PyTorchJob {NAME} is successfully completed."}
    running = {"type": "Running", "status": "True", "reason": "PyTorchJobRunning"}
    with KubeServer(served={OPERATOR: ["pytorchjobs", "profiles"]},
                    statuses=[{"conditions": [running]}, {"conditions": [succeeded]}]) as server:
        summary, sleeps, _ = _launch(server, _spec(nodes=2))
    assert summary == {"kind": "PyTorchJob", "name": NAME, "namespace": "team-a", "nodes": 2}
    assert _calls(server)[:3] == [("GET", f"/apis/{TRAINER}"), ("GET", f"/apis/{OPERATOR}"), ("POST", PYTORCHJOBS)]
    assert server.created() == [pytorchjob_manifest(_spec(nodes=2))]
    assert sleeps == [30]


def test_a_failed_pytorchjob_fails_the_task_with_its_reason():
    failed = {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed",
              "message": f"PyTorchJob team-a/{NAME} has failed because 1 Worker replica(s) failed."}
    with KubeServer(served={OPERATOR: ["pytorchjobs"]}, statuses=[{"conditions": [failed]}]) as server:
        with pytest.raises(LocgenError, match=re.escape(
                f"train: PyTorchJob team-a/{NAME} failed: PyTorchJobFailed: PyTorchJob team-a/{NAME} has failed "
                f"because 1 Worker replica(s) failed.; see kubectl -n team-a describe pytorchjob {NAME}, ")):
            _launch(server)


def test_a_cluster_without_either_controller_is_told_what_to_install():
    with KubeServer(served={OPERATOR: ["profiles"]}) as server:  # Kubeflow's profiles alone: kubeflow.org/v1
        with pytest.raises(LocgenError) as raised:
            _launch(server)
    assert str(raised.value) == (
        f"train_nodes > 1: the cluster at {server.url} serves neither Kubeflow Trainer "
        "(trainjobs.trainer.kubeflow.org/v1alpha1, with the ClusterTrainingRuntime torch-distributed) nor the "
        "Training Operator (pytorchjobs.kubeflow.org/v1): install Kubeflow Trainer v2 (part of Kubeflow 1.11), or "
        "train on one node (train_nodes 1)")
    assert server.created() == []


def test_a_missing_role_is_named():
    with KubeServer(served={TRAINER: ["trainjobs"]}, forbidden={("create", "trainjobs")}) as server:
        with pytest.raises(LocgenError) as raised:
            _launch(server)
    assert str(raised.value) == (
        'train: the pipeline\'s ServiceAccount may not create trainjobs.trainer.kubeflow.org (trainjobs.trainer.'
        'kubeflow.org is forbidden: User "system:serviceaccount:team-a:default-editor" cannot create resource '
        '"trainjobs" in API group "trainer.kubeflow.org" in the namespace "team-a"): apply the Role and RoleBinding '
        "locgen-training-jobs of manifests/base/trainjob-rbac.yaml in the pipeline's namespace (kubectl apply -k "
        "manifests/overlays/<yours>)")


def test_an_unreachable_api_server_is_one_line():
    with KubeServer() as server:
        api_client = server.api_client()
    with pytest.raises(LocgenError, match=r"^train: the Kubernetes API did not answer to read the API group "
                                          r"trainer\.kubeflow\.org/v1alpha1: "):
        launch_and_wait(_spec(), api_client, sleep=lambda seconds: None)


def test_outside_a_pod_the_in_cluster_client_says_so(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(LocgenError, match=r"^train_nodes > 1 launches a training job from a pipeline pod, through "
                                          r"its ServiceAccount; this is not one \("):
        in_cluster_client()
