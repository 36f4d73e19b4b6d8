"""A hostile HTTP server on 127.0.0.1: it answers every request with one of the answers that a download must
survive, and never ends them itself, so only the client's bounds can (a test's outcome cannot depend on how
fast the machine is):

- `endless`: a 200 with no length, then data for as long as the client reads;
- `announced`: a 200 that announces a body of 10**12 bytes, then data;
- `drip`: a 200, then one byte of body at a time, a little apart, forever;
- `drip_headers`: a status line, then one header line that never ends, one byte at a time.

    with DripServer("drip") as server:
        load_locations(server.url + "/gbfs.json", limits=...)
"""

from __future__ import annotations

import socket
import socketserver
import threading
from typing import Self

PAUSE_S = 0.02  # between drops: short, so a test waits for its deadline and not much longer
BLOCK = b"<" * (1 << 16)


class DripServer:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self._stop = threading.Event()

    def __enter__(self) -> Self:
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(1 << 16)  # the request, as far as it came in one piece: never looked at
                owner.requests += 1
                try:
                    owner._answer(self.request)
                except OSError:
                    pass  # the client hung up: what the test wanted

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _answer(self, sock: socket.socket) -> None:
        if self.mode == "drip_headers":
            sock.sendall(b"HTTP/1.1 200 OK\r\nX-Never-Ends: ")
            self._drip(sock)
        length = b"Content-Length: 1000000000000\r\n" if self.mode == "announced" else b""
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + length + b"Connection: close\r\n\r\n")
        if self.mode == "drip":
            self._drip(sock)
        while not self._stop.is_set():
            sock.sendall(BLOCK)

    def _drip(self, sock: socket.socket) -> None:
        while not self._stop.wait(PAUSE_S):
            sock.sendall(b"a")
