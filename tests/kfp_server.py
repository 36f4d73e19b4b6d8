"""A loopback imitation of the Kubeflow Pipelines REST API (v2beta1), as far as `locgen submit` uses it.

It answers what kfp.Client asks on the way (health, pipeline and version lookup by name, experiment
lookup and creation, pipeline and version uploads, runs, recurring runs) with the fields the client
reads, and records every request (method, path, query, JSON body or uploaded file, Authorization
header), so a test sees exactly what a real endpoint would receive. It refuses what the real API
server refuses: a version name a pipeline already has (409), a request without the bearer token it
was given (401), and in multi-user mode an experiment or upload without a namespace (400).

    with KfpServer() as server:
        send(plan(server.url, ...))
        server.requests
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import urllib.parse
from dataclasses import dataclass, field

from loopback import LoopbackServer, body_of

API = "/apis/v2beta1"


@dataclass
class Received:
    method: str
    path: str
    query: dict
    body: dict | None = None  # JSON bodies
    upload: bytes | None = None  # the file of a multipart upload
    authorization: str | None = None


@dataclass
class KfpServer(LoopbackServer):
    pipelines: dict = field(default_factory=dict)  # name -> id, the pipelines "already there"
    versions: dict = field(default_factory=dict)  # pipeline id -> {version name: version id}, "already there"
    multi_user: bool = False
    tag_name: str | None = "2.15.0"  # the version healthz states; None: it states none
    token: str | None = None  # the bearer token every request must carry; None: any
    run_state: str = "SUCCEEDED"  # what a started run has ended as, when asked
    task_details: list = field(default_factory=list)  # its tasks: {"display_name", "state"} each
    down_after_healthz: bool = False  # answers its health check, then drops every connection unanswered
    fails_with: int | None = None  # after its health check, answers every request with this status
    requests: list[Received] = field(default_factory=list)

    def answer(self, method: str, request) -> tuple[int, dict]:
        route = {"GET": self._get, "POST": self._post}.get(method)
        received = self._received(method, request)
        if received.path != f"{API}/healthz" and self.down_after_healthz:
            raise ConnectionAbortedError("gone")  # the handler closes the connection without an answer
        if received.path != f"{API}/healthz" and self.fails_with:
            return self.fails_with, {"error": "the database is not reachable", "code": 14}
        return self._checked(received, route) if route else (405, {"error": f"no {method}"})

    def _received(self, method: str, request) -> Received:
        url = urllib.parse.urlsplit(request.path)
        query = {key: values[0] for key, values in urllib.parse.parse_qs(url.query).items()}
        raw = body_of(request)
        received = Received(method, url.path, query, authorization=request.headers.get("Authorization"))
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
            received.upload = next(part.get_payload(decode=True) for part in message.iter_parts())
        elif raw:
            received.body = json.loads(raw)
        self.requests.append(received)
        return received

    def _checked(self, received: Received, route) -> tuple[int, dict]:
        if self.token is not None and received.authorization != f"Bearer {self.token}":
            return 401, {"error": "Unauthenticated: no valid bearer token", "code": 16}
        return route(received)

    def _get(self, received: Received) -> tuple[int, dict]:
        if received.path == f"{API}/healthz":
            return 200, {"multi_user": self.multi_user, "pipeline_store": "database",
                         **({"tag_name": self.tag_name} if self.tag_name else {})}
        name = _filtered_name(received.query)
        if received.path == f"{API}/experiments":
            return self._needs_namespace(received.query.get("namespace")) or (200, {})
        if received.path == f"{API}/pipelines":
            if name in self.pipelines:
                return 200, {"pipelines": [{"pipeline_id": self.pipelines[name], "display_name": name}],
                             "total_size": 1}
            return 200, {}
        if received.path.startswith(f"{API}/runs/"):
            return 200, {"run_id": received.path.rsplit("/", 1)[1], "state": self.run_state,
                         "run_details": {"task_details": self.task_details}}
        if received.path.startswith(f"{API}/pipelines/") and received.path.endswith("/versions"):
            pipeline_id = received.path.split("/")[-2]
            version_id = self.versions.get(pipeline_id, {}).get(name)
            if version_id is None:
                return 200, {}
            return 200, {"pipeline_versions": [{"pipeline_id": pipeline_id, "pipeline_version_id": version_id,
                                                "display_name": name}], "total_size": 1}
        return 404, {"error": f"no {received.path}"}

    def _post(self, received: Received) -> tuple[int, dict]:
        if received.path == f"{API}/pipelines/upload":
            refused = self._needs_namespace(received.query.get("namespace"))
            if refused:
                return refused
            pipeline_id = f"pipeline-{len(self.pipelines) + 1}"
            self.pipelines[received.query.get("name")] = pipeline_id
            return 200, {"pipeline_id": pipeline_id, "display_name": received.query.get("name")}
        if received.path == f"{API}/pipelines/upload_version":
            pipeline_id, name = received.query.get("pipelineid"), received.query.get("name")
            versions = self.versions.setdefault(pipeline_id, {})
            if name in versions:
                return 409, {"error": f"Failed to create a pipeline version: The name {name} already exist. Please "
                                      "specify a new name", "code": 6}
            versions[name] = f"version-{sum(len(names) for names in self.versions.values()) + 1}"
            return 200, {"pipeline_id": pipeline_id, "pipeline_version_id": versions[name]}
        if received.path == f"{API}/experiments":
            return self._needs_namespace((received.body or {}).get("namespace")) or (
                200, {"experiment_id": "experiment-1"})
        routes = {f"{API}/runs": {"run_id": "run-1"}, f"{API}/recurringruns": {"recurring_run_id": "recurring-1"}}
        if received.path in routes:
            return 200, routes[received.path]
        return 404, {"error": f"no {received.path}"}

    def _needs_namespace(self, namespace: str | None) -> tuple[int, dict] | None:
        if self.multi_user and not namespace:
            return 400, {"error": "Invalid input error: In multi-user mode, a namespace is required", "code": 3}
        return None


def _filtered_name(query: dict) -> str | None:
    """The display name a list request filters on (kfp.Client writes stringValue, older clients string_value)."""
    predicate = json.loads(query.get("filter", "{}")).get("predicates", [{}])[0]
    return predicate.get("stringValue") or predicate.get("string_value")
