"""A loopback imitation of the Kubernetes API server, as far as the multi-node launcher (pipeline.trainjob) uses it.

It answers discovery of an API group version (`served`: which group versions serve which resources; any other
is a 404, as on a cluster without that controller), and creates, reads and deletes the namespaced custom
objects of the resources it serves, with the answers of the real API server: 201 and the stored object on a
create, 409 AlreadyExists for a name that is taken, 404 NotFound for one that is absent, 403 Forbidden for a
verb on a resource the test's ServiceAccount may not use (`forbidden`), each error a Kubernetes Status object.
The controller is a script: every read of an object gives it the next status of `statuses` (the last one
stays). Every request is recorded (method, path, JSON body), so a test sees what a real server would receive.

    with KubeServer(served={"trainer.kubeflow.org/v1alpha1": ["trainjobs"]}, statuses=[...]) as server:
        launch_and_wait(spec, server.api_client())
        server.requests
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass, field

from kubernetes import client
from loopback import LoopbackServer, body_of

KINDS = {"trainjobs": "TrainJob", "pytorchjobs": "PyTorchJob", "profiles": "Profile"}  # resource -> kind
OBJECT_PATH = re.compile(r"/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<namespace>[^/]+)/"
                         r"(?P<resource>[^/]+)(/(?P<name>[^/]+))?")
VERBS = {"POST": "create", "GET": "get", "DELETE": "delete"}


@dataclass
class Received:
    method: str
    path: str
    body: dict | None = None


@dataclass
class KubeServer(LoopbackServer):
    served: dict = field(default_factory=dict)  # "group/version" -> the resources it serves
    objects: dict = field(default_factory=dict)  # (resource, namespace, name) -> object, "already there"
    statuses: list = field(default_factory=list)  # what successive reads of an object find as its status
    forbidden: set = field(default_factory=set)  # (verb, resource) the ServiceAccount may not
    service_account: str = "system:serviceaccount:team-a:default-editor"
    requests: list[Received] = field(default_factory=list)

    def answer(self, method: str, request) -> tuple[int, dict]:
        raw = body_of(request)
        received = Received(method, urllib.parse.urlsplit(request.path).path, json.loads(raw) if raw else None)
        self.requests.append(received)
        return self._route(received)

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(client.Configuration(host=self.url))

    def created(self) -> list[dict]:
        """The bodies of every create request, in order."""
        return [received.body for received in self.requests if received.method == "POST"]

    def _route(self, received: Received) -> tuple[int, dict]:
        group_version = received.path.removeprefix("/apis/")
        if received.method == "GET" and group_version in self.served:
            return 200, self._discovery(group_version)
        match = OBJECT_PATH.fullmatch(received.path)
        if not match or match["resource"] not in self.served.get(f"{match['group']}/{match['version']}", []):
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        verb, resource, name = VERBS[received.method], match["resource"], match["name"]
        qualified = f"{resource}.{match['group']}"
        if (verb, resource) in self.forbidden:
            named = f' "{name}"' if name else ""
            return 403, _status(403, "Forbidden", f'{qualified}{named} is forbidden: User "{self.service_account}" '
                                f'cannot {verb} resource "{resource}" in API group "{match["group"]}" in the '
                                f'namespace "{match["namespace"]}"')
        if verb == "create":
            return self._create(qualified, (resource, match["namespace"]), received.body)
        key = (resource, match["namespace"], name)
        if key not in self.objects:
            return 404, _status(404, "NotFound", f'{qualified} "{name}" not found')
        if verb == "delete":
            del self.objects[key]
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        if self.statuses:
            self.objects[key]["status"] = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return 200, self.objects[key]

    def _create(self, qualified: str, where: tuple[str, str], body: dict) -> tuple[int, dict]:
        name = body["metadata"]["name"]
        if (*where, name) in self.objects:
            return 409, _status(409, "AlreadyExists", f'{qualified} "{name}" already exists')
        stored = {**body, "metadata": {**body["metadata"], "uid": f"uid-{len(self.objects) + 1}",
                                       "resourceVersion": "1", "generation": 1}}
        self.objects[(*where, name)] = stored
        return 201, stored

    def _discovery(self, group_version: str) -> dict:
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                "resources": [{"name": resource, "singularName": resource.removesuffix("s"), "namespaced": True,
                               "kind": KINDS[resource], "verbs": ["create", "delete", "get", "list", "watch"]}
                              for resource in self.served[group_version]]}


def _status(code: int, reason: str, message: str) -> dict:
    """A Kubernetes Status object, as the API server answers a refused request."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
