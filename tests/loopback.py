"""A JSON HTTP server on 127.0.0.1, in a thread for the length of a `with` block: what the loopback imitations of
the Kubeflow Pipelines and Kubernetes APIs (kfp_server.py, kube_server.py) are made of. A subclass answers every
request in `answer(method, request)` (`request`: the http.server handler it came in on, with its path, headers
and body) with a status and a JSON document, or raises ConnectionAbortedError to drop the connection unanswered."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackServer:
    def answer(self, method: str, request: BaseHTTPRequestHandler) -> tuple[int, dict]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def do_DELETE(self) -> None:
                self._answer("DELETE")

            def _answer(self, method: str) -> None:
                try:
                    status, document = server.answer(method, self)
                except ConnectionAbortedError:  # a server gone away: the connection closes with no answer
                    self.close_connection = True
                    return
                self._send(status, document)

            def _send(self, status: int, document: dict) -> None:
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


def body_of(request: BaseHTTPRequestHandler) -> bytes:
    """The raw body of a request (empty without one)."""
    return request.rfile.read(int(request.headers.get("Content-Length") or 0))
