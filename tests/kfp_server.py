"""A loopback imitation of the Kubeflow Pipelines REST API (v2beta1), as far as `locgen submit` uses it.

It answers what kfp.Client asks on the way (health, pipeline lookup by name, experiment lookup and
creation, pipeline and version uploads, runs, recurring runs) with the fields the client reads, and
records every request (method, path, query, JSON body or uploaded file, Authorization header), so a
test sees exactly what a real endpoint would receive.

    with KfpServer() as server:
        send(plan(server.url, ...))
        server.requests
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
class KfpServer:
    pipelines: dict = field(default_factory=dict)  # name -> id, the pipelines "already there"
    requests: list[Received] = field(default_factory=list)

    def __enter__(self) -> KfpServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._answer(server._get(self._received("GET")))

            def do_POST(self) -> None:
                self._answer(server._post(self._received("POST")))

            def _received(self, method: str) -> Received:
                url = urllib.parse.urlsplit(self.path)
                query = {key: values[0] for key, values in urllib.parse.parse_qs(url.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received = Received(method, url.path, query, authorization=self.headers.get("Authorization"))
                content_type = self.headers.get("Content-Type", "")
                if content_type.startswith("multipart/form-data"):
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
                    received.upload = next(part.get_payload(decode=True) for part in message.iter_parts())
                elif raw:
                    received.body = json.loads(raw)
                server.requests.append(received)
                return received

            def _answer(self, reply: tuple[int, dict]) -> None:
                status, document = reply
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _get(self, received: Received) -> tuple[int, dict]:
        if received.path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if received.path in (f"{API}/pipelines", f"{API}/experiments"):
            name = json.loads(received.query.get("filter", "{}")).get("predicates", [{}])[0].get("string_value") \
                or json.loads(received.query.get("filter", "{}")).get("predicates", [{}])[0].get("stringValue")
            if received.path.endswith("pipelines") and name in self.pipelines:
                return 200, {"pipelines": [{"pipeline_id": self.pipelines[name], "display_name": name}],
                             "total_size": 1}
            return 200, {}
        return 404, {"error": f"no {received.path}"}

    def _post(self, received: Received) -> tuple[int, dict]:
        routes = {
            f"{API}/pipelines/upload": {"pipeline_id": "pipeline-1", "display_name": received.query.get("name")},
            f"{API}/pipelines/upload_version": {"pipeline_id": received.query.get("pipelineid"),
                                                "pipeline_version_id": "version-1"},
            f"{API}/experiments": {"experiment_id": "experiment-1"},
            f"{API}/runs": {"run_id": "run-1"},
            f"{API}/recurringruns": {"recurring_run_id": "recurring-1"},
        }
        if received.path in routes:
            return 200, routes[received.path]
        return 404, {"error": f"no {received.path}"}
