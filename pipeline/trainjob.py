"""Training on several nodes of a Kubeflow cluster: the train task launches one distributed job, waits for it
and fails with its reason.

The job is a Kubeflow Trainer `TrainJob` on the `torch-distributed` ClusterTrainingRuntime (Trainer v2, in
Kubeflow 1.11) where trainer.kubeflow.org/v1alpha1 is served, else a Training Operator `PyTorchJob`
(kubeflow.org/v1). Every node runs `locgen train` under torchrun; the data and the checkpoints live in the
object store, so nothing but the object-store Secret is mounted, and a retried job resumes its checkpoint.
The job is named after the pipeline run (`job_name`): a retried launcher task re-attaches to the job of its run,
or replaces it when that job has failed.

Both controllers give torchrun its rendezvous in PET_* variables, which torchrun reads as the defaults of its
flags (PET_NNODES: --nnodes, PET_NPROC_PER_NODE: --nproc-per-node, PET_NODE_RANK: --node-rank,
PET_MASTER_ADDR / PET_MASTER_PORT: the static rendezvous), so the command carries no topology:
- Trainer v2.1 (its Torch plugin, for a runtime with mlPolicy.torch as torch-distributed has): PET_NNODES from
  trainer.numNodes, PET_NPROC_PER_NODE from trainer.numProcPerNode, PET_NODE_RANK from the Job's completion
  index, PET_MASTER_ADDR `<job>-node-0-0.<job>` and PET_MASTER_PORT 29500, in the container named `node`;
- Training Operator v1.9 (spec.nprocPerNode, no elasticPolicy): PET_NNODES (the replicas), PET_NPROC_PER_NODE,
  PET_NODE_RANK (Master 0, Worker i+1), PET_MASTER_ADDR (the Master's Service) and PET_MASTER_PORT (the port
  named pytorchjob-port of the container named `pytorch`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from components.core.errors import LocgenError, one_line

RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow 1.11 installs
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"  # in every pod of a ServiceAccount
RUNTIME_JOB = "node"  # its replicated job and container (Trainer's constants.Node)
TORCHRUN = ["python", "-m", "torch.distributed.run", "-m", "locgen", "train"]
PYTORCHJOB_PORT = {"name": "pytorchjob-port", "containerPort": 23456}  # the Training Operator's defaults
RBAC = "locgen-training-jobs"  # the Role and RoleBinding of manifests/base/trainjob-rbac.yaml
RUN_ID_LABEL = "locgen/run-id"
PART_OF = {"app.kubernetes.io/part-of": "locgen", "app.kubernetes.io/component": "train"}
# A profile namespace of multi-user Kubeflow injects an Istio sidecar into its pods: it would keep a finished
# node's pod running (its Job never completes) and intercept torchrun's rendezvous between the pods.
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}
SHM_VOLUME = "dshm"
SHM_MOUNT = {"name": SHM_VOLUME, "mountPath": "/dev/shm"}
# JobSet (under a TrainJob) names each pod "<job>-node-0-<node index>-<5 random characters>" and refuses a job
# whose longest pod name would not be a DNS-1035 label (63 characters): with up to MAX_NODES nodes, that leaves 46.
MAX_NODES = 1000
MAX_JOB_NAME = 63 - len(f"-{RUNTIME_JOB}-0-") - len(str(MAX_NODES - 1)) - len("-abcde")
JOB_NAME_PREFIX = "locgen"
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class DistributedTraining:
    """One training on `nodes` pods, each running torchrun with `gpus_per_node` processes (one a GPU, NCCL),
    or one process on its CPUs (gloo) when gpus_per_node is 0."""

    name: str  # job_name(run id)
    namespace: str
    image: str  # the train image
    train_arguments: list[str]  # what follows `locgen train`
    nodes: int
    gpus_per_node: int
    secret: str  # the object-store Secret, its keys named as the variables
    secret_variables: tuple[str, ...]
    cpu_request: str  # per node, as Kubernetes quantities
    cpu_limit: str
    memory_request: str
    memory_limit: str
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    shm_size: str = "8Gi"  # /dev/shm of a GPU node, in memory (NCCL between its processes)
    labels: dict[str, str] = field(default_factory=dict)  # job_labels(run id)

    def __post_init__(self):
        if not 2 <= self.nodes <= MAX_NODES:
            raise LocgenError(f"train_nodes {self.nodes}: a distributed training takes 2 to {MAX_NODES} nodes "
                              "(train_nodes 1 trains in the task's own pod)")
        if self.gpus_per_node < 0:
            raise LocgenError(f"train_gpus {self.gpus_per_node}: give 0 (CPU) or more GPUs per node")
        if self.gpus_per_node and not self.gpu_resource:
            raise LocgenError(f"train_gpus {self.gpus_per_node}: this pipeline was compiled for a cluster without "
                              "GPUs (locgen compile --cpu-only); give train_gpus 0, or compile it with GPUs")
        if not (DNS_1035_LABEL.fullmatch(self.name) and len(self.name) <= MAX_JOB_NAME):
            raise LocgenError(f"training job name {self.name!r}: give a DNS-1035 label of at most {MAX_JOB_NAME} "
                              "characters (job_name makes one from the run id)")

    @property
    def processes_per_node(self) -> int:
        return self.gpus_per_node or 1


def job_name(run_id: str) -> str:
    """The training job of a pipeline run: "locgen-<run id>" (a KFP run id, a UUID, fits whole), the same at
    every retry; an id that is longer, or not made of letters, digits and dashes, keeps a hash of itself."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_id.lower()).strip("-")
    if not slug:
        raise LocgenError(f"run id {run_id!r}: give one with letters or digits (it names the training job)")
    name = f"{JOB_NAME_PREFIX}-{slug}"
    if len(name) <= MAX_JOB_NAME and slug == run_id:
        return name
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{name[:MAX_JOB_NAME - len(digest) - 1].rstrip('-')}-{digest}"


def job_labels(run_id: str) -> dict[str, str]:
    """The labels of a run's training job and its pods (kubectl get pods -l locgen/run-id=<run id>)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id)[:63].strip("-_.")
    return {**PART_OF, RUN_ID_LABEL: value}


# --- the manifests --------------------------------------------------------------------------------------

def trainjob_manifest(spec: DistributedTraining) -> dict:
    """The TrainJob: the runtime's `node` job, numNodes pods of the train image; GPU placement, /dev/shm and
    the pod labels go in a podTemplateOverride (the runtime's env is set through trainer.env alone)."""
    override = {"targetJobs": [{"name": RUNTIME_JOB}],
                "metadata": {"labels": dict(spec.labels), "annotations": dict(POD_ANNOTATIONS)}}
    if spec.gpus_per_node:
        override["spec"] = {**_gpu_placement(spec),
                            "containers": [{"name": RUNTIME_JOB, "volumeMounts": [dict(SHM_MOUNT)]}]}
    return {
        "apiVersion": f"{TRAINJOB.group}/{TRAINJOB.version}", "kind": TRAINJOB.kind,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": dict(spec.labels)},
        "spec": {
            "runtimeRef": {"apiGroup": TRAINJOB.group, "kind": "ClusterTrainingRuntime", "name": RUNTIME},
            "labels": dict(spec.labels),  # on the JobSet and its Jobs
            # numProcPerNode as a number: "auto" would count a CPU node's cores.
            "trainer": {"image": spec.image, "command": TORCHRUN, "args": list(spec.train_arguments),
                        "env": _secret_env(spec), "numNodes": spec.nodes,
                        "numProcPerNode": spec.processes_per_node, "resourcesPerNode": _resources(spec)},
            "podTemplateOverrides": [override],
        },
    }


def pytorchjob_manifest(spec: DistributedTraining) -> dict:
    """The PyTorchJob: one Master and nodes - 1 Workers, alike. A failed pod fails the job (restartPolicy
    Never): a static rendezvous cannot take one node back, so the launcher task's retry replaces the job."""
    def replicas(count: int) -> dict:
        return {"replicas": count, "restartPolicy": "Never", "template": _pytorch_pod(spec)}

    return {
        "apiVersion": f"{PYTORCHJOB.group}/{PYTORCHJOB.version}", "kind": PYTORCHJOB.kind,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": dict(spec.labels)},
        "spec": {"nprocPerNode": str(spec.processes_per_node),
                 "runPolicy": {"cleanPodPolicy": "Running"},  # the finished pods stay, with their logs
                 "pytorchReplicaSpecs": {"Master": replicas(1), "Worker": replicas(spec.nodes - 1)}},
    }


def _pytorch_pod(spec: DistributedTraining) -> dict:
    container = {"name": "pytorch", "image": spec.image, "command": TORCHRUN, "args": list(spec.train_arguments),
                 "env": _secret_env(spec), "resources": _resources(spec), "ports": [dict(PYTORCHJOB_PORT)],
                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    if spec.gpus_per_node:
        container["volumeMounts"] = [dict(SHM_MOUNT)]
    # No runAsUser: a restricted cluster (OpenShift) assigns the UID; the image's own user is not root.
    pod = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
           "containers": [container]}
    if spec.gpus_per_node:
        pod.update(_gpu_placement(spec))
    return {"metadata": {"labels": dict(spec.labels), "annotations": dict(POD_ANNOTATIONS)}, "spec": pod}


def _gpu_placement(spec: DistributedTraining) -> dict:
    """What a GPU node's pod needs besides its GPUs: the usual GPU taint tolerated, the GPU nodes' labels,
    and /dev/shm in memory (Docker's default 64 MB is too small for NCCL)."""
    placement = {"tolerations": [{"key": spec.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}],
                 "volumes": [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}]}
    if spec.gpu_node_selector:
        placement["nodeSelector"] = dict(spec.gpu_node_selector)
    return placement


def _secret_env(spec: DistributedTraining) -> list[dict]:
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": spec.secret, "key": name}}}
            for name in spec.secret_variables]


def _resources(spec: DistributedTraining) -> dict:
    limits = {"cpu": spec.cpu_limit, "memory": spec.memory_limit}
    if spec.gpus_per_node:
        limits[spec.gpu_resource] = str(spec.gpus_per_node)
    return {"requests": {"cpu": spec.cpu_request, "memory": spec.memory_request}, "limits": limits}


# --- launching ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobKind:
    kind: str
    group: str
    version: str
    plural: str
    succeeded: str  # the condition type that ends it well
    failed: str
    manifest: Callable[[DistributedTraining], dict]


TRAINJOB = JobKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "Complete", "Failed",
                   trainjob_manifest)
PYTORCHJOB = JobKind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "Succeeded", "Failed", pytorchjob_manifest)
JOB_KINDS = (TRAINJOB, PYTORCHJOB)  # in order of preference


def _say(line: str) -> None:
    print(line, flush=True)  # a task's output is its log in the Kubeflow UI


def in_cluster_client() -> tuple[client.ApiClient, str]:
    """The API client of this pod's ServiceAccount, and the pod's namespace (where the job goes)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
        namespace = Path(POD_NAMESPACE_FILE).read_text().strip()
    except (config.ConfigException, OSError) as error:
        raise LocgenError(f"train_nodes > 1 launches a training job from a pipeline pod, through its "
                          f"ServiceAccount; this is not one ({one_line(error, 200)}): run it in the cluster, or "
                          "train_nodes 1") from None
    return client.ApiClient(configuration), namespace


def served_kind(api_client: client.ApiClient) -> JobKind:
    """The preferred kind of training job the cluster serves; one line naming what to install when none."""
    api = client.CustomObjectsApi(api_client)
    for kind in JOB_KINDS:
        resources = _request(f"read the API group {kind.group}/{kind.version}",
                             lambda: api.get_api_resources(kind.group, kind.version), passes=(404,))
        if resources is not None and any(resource.name == kind.plural for resource in resources.resources):
            return kind
    trainer, operator = (f"{kind.plural}.{kind.group}/{kind.version}" for kind in JOB_KINDS)
    raise LocgenError(f"train_nodes > 1: the cluster at {api_client.configuration.host} serves neither Kubeflow "
                      f"Trainer ({trainer}, with the ClusterTrainingRuntime {RUNTIME}) nor the Training Operator "
                      f"({operator}): install Kubeflow Trainer v2 (part of Kubeflow 1.11), or train on one node "
                      "(train_nodes 1)")


def launch_and_wait(spec: DistributedTraining, api_client: client.ApiClient,
                    sleep: Callable[[float], None] = time.sleep, poll_s: float = 30,
                    log: Callable[[str], None] = _say) -> dict:
    """Create the run's training job (or attach to it: a retry of this task), then poll it every `poll_s`
    seconds until it ends; its failure is one LocgenError line with the reason and where to look."""
    job = _Job(served_kind(api_client), spec, client.CustomObjectsApi(api_client))
    job.start(sleep, poll_s, log)
    job.wait(sleep, poll_s, log)
    return {"kind": job.kind.kind, "name": spec.name, "namespace": spec.namespace, "nodes": spec.nodes}


@dataclass(frozen=True)
class _Job:
    """A training job of one kind, spoken to through the API server."""

    kind: JobKind
    spec: DistributedTraining
    api: client.CustomObjectsApi

    def __str__(self) -> str:
        return f"{self.kind.kind} {self.spec.namespace}/{self.spec.name}"

    def start(self, sleep: Callable[[float], None], poll_s: float, log: Callable[[str], None]) -> None:
        """Create the job; one of this run's already there (a retried task) is attached to, or replaced when
        it has failed (the training then resumes the run's last checkpoint)."""
        if self.create(passes=(409,)) is not None:
            log(f"train: created {self} ({self.spec.nodes} nodes, {self.spec.processes_per_node} processes each)")
            return
        failed = _true_conditions(self.read()).get(self.kind.failed)
        if failed is None:
            log(f"train: attached to {self}, created by an earlier try of this task")
            return
        log(f"train: {self} of this run failed before ({failed.get('reason')}): replacing it")
        self.call("delete", lambda: self.api.delete_namespaced_custom_object(
            *self._path(), self.spec.name, propagation_policy="Background"), passes=(404,))
        while self.read(passes=(404,)) is not None:  # until its deletion is through
            sleep(poll_s)
        self.create()
        log(f"train: created {self} again")

    def wait(self, sleep: Callable[[float], None], poll_s: float, log: Callable[[str], None]) -> None:
        """Until the job has succeeded; its failure is one line. Each change of its conditions is logged."""
        last = None
        while True:
            current = self.read(passes=(404,))
            if current is None:
                raise LocgenError(f"train: {self} was deleted while this task waited for it; a retry of the task "
                                  "creates it again")
            conditions = _true_conditions(current)
            if self.kind.failed in conditions:
                raise LocgenError(self.failure(conditions[self.kind.failed]))
            if self.kind.succeeded in conditions:
                log(f"train: {self} has completed")
                return
            now = sorted(conditions)
            if now != last:
                log(f"train: {self}: {', '.join(now) or 'waiting for its controller'}")
                last = now
            sleep(poll_s)

    def create(self, passes: tuple[int, ...] = ()) -> dict | None:
        return self.call("create", lambda: self.api.create_namespaced_custom_object(
            *self._path(), self.kind.manifest(self.spec)), passes)

    def read(self, passes: tuple[int, ...] = ()) -> dict | None:
        return self.call("get", lambda: self.api.get_namespaced_custom_object(*self._path(), self.spec.name), passes)

    def call(self, verb: str, request: Callable[[], object], passes: tuple[int, ...] = ()):
        """request(), or None when the API server answers a status of `passes`; a 403 names the Role to apply."""
        return _request(f"{verb} the {self}", request, passes, rbac=f"{verb} {self.kind.plural}.{self.kind.group}")

    def failure(self, condition: dict) -> str:
        kind, name, namespace = self.kind.kind, self.spec.name, self.spec.namespace
        return (f"train: {self} failed: {condition.get('reason') or 'no reason given'}: "
                f"{one_line(condition.get('message') or 'no message', 500)}; see kubectl -n {namespace} describe "
                f"{kind.lower()} {name}, and its pods' logs: kubectl -n {namespace} logs -l "
                f"{RUN_ID_LABEL}={self.spec.labels.get(RUN_ID_LABEL, '')} --prefix --tail 50")

    def _path(self) -> tuple[str, str, str, str]:
        return self.kind.group, self.kind.version, self.spec.namespace, self.kind.plural


def _true_conditions(job: dict) -> dict[str, dict]:
    """The job's conditions that hold, by type."""
    return {condition.get("type"): condition for condition in (job.get("status") or {}).get("conditions") or []
            if condition.get("status") == "True"}


def _request(what: str, request: Callable[[], object], passes: tuple[int, ...] = (), rbac: str | None = None):
    """request(), or None when the API server answers a status of `passes`; any other answer is one line."""
    try:
        return request()
    except ApiException as error:
        if error.status in passes:
            return None
        message = _status_message(error)
        if error.status == 403 and rbac:
            raise LocgenError(f"train: the pipeline's ServiceAccount may not {rbac} ({message}): apply the Role and "
                              f"RoleBinding {RBAC} of manifests/base/trainjob-rbac.yaml in the pipeline's namespace "
                              "(kubectl apply -k manifests/overlays/<yours>)") from None
        raise LocgenError(f"train: the Kubernetes API refused to {what}: {error.status} {message}") from None
    except urllib3.exceptions.HTTPError as error:
        raise LocgenError(f"train: the Kubernetes API did not answer to {what}: {one_line(error, 300)}") from None


def _status_message(error: ApiException) -> str:
    """The message of the Kubernetes Status an API error carries (its HTTP reason when it carries none)."""
    try:
        status = json.loads(error.body or "")
    except ValueError:
        status = {}
    message = status.get("message") if isinstance(status, dict) else None
    return one_line(message or error.reason or "no message", 400)
