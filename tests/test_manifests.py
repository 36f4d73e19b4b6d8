"""The Kubernetes manifests: every kustomization renders (kubectl's kustomize, offline) into objects that
the Kubernetes 1.37 schemas accept strictly, the Secret is a template, and the overlays say what they change."""

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import PROJECT_ROOT

KUBERNETES_VERSION = "1.37.0"  # the schemas the manifests are checked against
KUSTOMIZATIONS = ["base", "overlays/local", "overlays/gpu"]
KUBECTL = Path(sys.executable).parent / "kubectl"


def _render(kustomization: str) -> list[dict]:
    result = subprocess.run([str(KUBECTL), "kustomize", str(PROJECT_ROOT / "manifests" / kustomization)],
                            capture_output=True, text=True, check=True)
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_object_is_valid_kubernetes(kustomization):
    objects = _render(kustomization)
    kinds = sorted(document["kind"] for document in objects)
    assert {"Secret", "Job", "CronJob", "ServiceAccount", "Role", "RoleBinding"} <= set(kinds)
    for document in objects:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"], document["metadata"]["name"]
        assert document["metadata"]["labels"]["app.kubernetes.io/part-of"] == "locgen"


def test_an_invalid_object_would_be_caught():
    job = next(document for document in _render("base") if document["kind"] == "Job")
    job["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["nmae"] = "typo"  # strict: unknown
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def test_the_secret_is_a_template_with_the_variables_the_pipelines_read():
    from pipeline.pipelines import OBJECT_STORE_SECRET, OBJECT_STORE_VARIABLES

    secret = next(document for document in _render("base") if document["kind"] == "Secret")
    assert secret["metadata"]["name"] == OBJECT_STORE_SECRET
    assert set(OBJECT_STORE_VARIABLES) <= set(secret["stringData"])
    assert secret["stringData"]["AWS_ACCESS_KEY_ID"] == secret["stringData"]["AWS_SECRET_ACCESS_KEY"] == "REPLACE-ME"


def _by_kind(objects: list[dict], kind: str) -> dict:
    return next(document for document in objects if document["kind"] == kind)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_pod_fixes_its_user_so_restricted_clusters_can_assign_one(kustomization):
    """OpenShift's restricted SCC refuses a pod that asks for a UID outside the namespace's range."""
    for document in _render(kustomization):
        if document["kind"] in ("Job", "CronJob"):
            text = yaml.safe_dump(document)
            assert "runAsUser" not in text and "runAsNonRoot: true" in text, document["metadata"]["name"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_task_pods_may_launch_and_watch_training_jobs(kustomization):
    """train_nodes > 1: the train task creates a TrainJob (or a PyTorchJob), watches it, and replaces a failed one."""
    from pipeline.trainjob import RBAC

    objects = _render(kustomization)
    role = next(document for document in objects if document["kind"] == "Role" and document["metadata"]["name"] == RBAC)
    assert {(group, resource): set(rule["verbs"]) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"]} == {
        ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete"},
        ("kubeflow.org", "pytorchjobs"): {"create", "get", "list", "watch", "delete"}}
    binding = next(document for document in objects
                   if document["kind"] == "RoleBinding" and document["metadata"]["name"] == RBAC)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RBAC}
    # KFP's task pods: default-editor on multi-user Kubeflow, pipeline-runner on KFP standalone; both in the
    # RoleBinding's own namespace.
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor"},
                                   {"kind": "ServiceAccount", "name": "pipeline-runner"}]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]


def test_overlays_set_namespace_endpoint_images_and_schedule():
    local, gpu = _render("overlays/local"), _render("overlays/gpu")
    assert {document["metadata"]["namespace"] for document in local} == {"kubeflow"}
    assert {document["metadata"]["namespace"] for document in gpu} == {"kubeflow-user-example-com"}
    assert not any(document["kind"] == "Namespace" for document in local + gpu)  # they exist already
    assert _by_kind(local, "Secret")["stringData"]["AWS_ENDPOINT_URL"] == "http://minio-service.kubeflow:9000"
    cron = _by_kind(gpu, "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert {item["name"]: item["value"] for item in container["env"]}["LOCGEN_PRESET"] == "fastcut"
    assert container["image"].startswith("registry.example.com/locgen/render:")
    assert container["command"][:2] == ["locgen", "submit"] and "--pipeline" in container["command"]
    token = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]
    assert token["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
