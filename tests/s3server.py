"""Test helpers: a real S3 server on loopback, and a TCP proxy that dies on a chosen request.

Why moto (`moto[server]`): it speaks the real S3 REST protocol over HTTP (SigV4-signed requests,
XML answers, ListObjectsV2 paging, CopyObject), so the `minio` client is exercised exactly as against
MinIO or AWS; it installs from PyPI with no binary to download; and `ThreadedMotoServer` starts
in-process on 127.0.0.1 in a fraction of a second. It accepts any access key.

`DyingProxy` sits between the client and that server and simulates a store that goes away in the
middle of a run: it forwards bytes both ways until it sees the Nth request whose request line
matches a pattern, and then, before forwarding that request, closes every connection and its
listening socket, so retries are refused.
"""

from __future__ import annotations

import re
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from minio import Minio

ACCESS_KEY = "locgen-test-key"
SECRET_KEY = "locgen-test-secret"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running S3 server on loopback with one bucket."""

    endpoint_url: str
    bucket: str

    def env(self, endpoint_url: str | None = None) -> dict[str, str]:
        """The AWS_* variables that point a client at this server (or at a proxy in front of it).

        Empty values unset what the machine running the tests may have set.
        """
        return {"AWS_ENDPOINT_URL": endpoint_url or self.endpoint_url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_SESSION_TOKEN": "", "AWS_REGION": REGION,
                "AWS_CA_BUNDLE": ""}

    def client(self) -> Minio:
        """A plain minio client straight to the server, to check what really landed."""
        host_port = self.endpoint_url.removeprefix("http://")
        return Minio(host_port, ACCESS_KEY, SECRET_KEY, secure=False, region=REGION)

    def object_names(self, prefix: str = "") -> set[str]:
        """Every object name under `prefix`, temporary ones included."""
        return {obj.object_name for obj in self.client().list_objects(self.bucket, prefix, recursive=True)}


@contextmanager
def s3_server(bucket: str = "locgen-test") -> Iterator[S3Server]:
    """Start moto's S3 server on a free loopback port, create `bucket`, stop the server on exit."""
    from moto.server import ThreadedMotoServer  # here: the tests that need no S3 run without moto (GPU machines)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Server(f"http://{host}:{port}", bucket)
        s3.client().make_bucket(bucket)
        yield s3
    finally:
        server.stop()


def unique_prefix() -> str:
    """A fresh prefix, so tests sharing one server do not see each other's objects."""
    return f"t-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses every connection while the block runs: bound, never listening.

    Unlike a `free_port()`, it stays held, so nothing else can start listening on it meanwhile: a
    connection to it is refused at once, on every run.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


class RequestSplitter:
    """Splits a client->server HTTP/1.1 byte stream into requests, even on keep-alive connections.

    A request is a head (request line and headers, up to the blank line) and a body of
    Content-Length bytes, so the next request line is where that body ends; bytes inside a body are
    never taken for a request line. Chunked request bodies are not supported (minio always sends
    Content-Length).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._body_left = 0

    def feed(self, data: bytes) -> list[tuple[bytes | None, bytes]]:
        """Pieces of the stream ready to forward: (request line, head) for a head, (None, bytes) for body."""
        self._buffer += data
        pieces: list[tuple[bytes | None, bytes]] = []
        while self._buffer:
            if self._body_left:
                body, self._buffer = self._buffer[:self._body_left], self._buffer[self._body_left:]
                self._body_left -= len(body)
                pieces.append((None, body))
                continue
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                break  # the rest of the head has not arrived yet
            head, self._buffer = self._buffer[:end + 4], self._buffer[end + 4:]
            length = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
            self._body_left = int(length.group(1)) if length else 0
            pieces.append((head.split(b"\r\n", 1)[0], head))
        return pieces


def _shut(sock: socket.socket) -> None:
    """Shut a socket down both ways, which also wakes a thread blocked in recv() or accept() on it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer


class DyingProxy:
    """A TCP proxy on 127.0.0.1 that dies on the Nth request whose request line matches `pattern`.

    `pattern` is a bytes regex searched in request lines, e.g. rb"^PUT /\\S+\\.png " for a PUT of a
    PNG. The matching request is never forwarded: the proxy closes its listening socket (further
    connections are refused) and every open connection, and sets `died`.
    """

    def __init__(self, upstream_url: str, pattern: bytes, nth: int):
        host, port = upstream_url.removeprefix("http://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._pattern = re.compile(pattern)
        self._nth = nth
        self.matched = 0
        self.died = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> DyingProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._shut_all()
        self._acceptor.join()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                break  # the listener was shut down
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()
        self._listener.close()

    def _serve(self, client: socket.socket) -> None:
        """Carry one client connection: requests up, answers down, until either side or the proxy ends."""
        try:
            upstream = socket.create_connection(self._upstream)
        except OSError:
            client.close()
            return
        with self._lock:
            if self.died.is_set():
                client.close()
                upstream.close()
                return
            self._sockets |= {client, upstream}
        answers = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        answers.start()
        splitter = RequestSplitter()
        try:
            while data := client.recv(65536):
                for request_line, piece in splitter.feed(data):
                    if request_line is not None and self._should_die(request_line):
                        return
                    upstream.sendall(piece)
        except OSError:
            pass  # a side went away: the finally block ends the other direction too
        finally:
            _shut(client)
            _shut(upstream)
            answers.join()
            with self._lock:
                self._sockets -= {client, upstream}
            client.close()
            upstream.close()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        """Copy bytes until `source` ends, then shut both down so the other direction ends as well."""
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            _shut(source)
            _shut(target)

    def _should_die(self, request_line: bytes) -> bool:
        """Count a matching request; on the Nth, die before it is forwarded."""
        if not self._pattern.search(request_line):
            return False
        with self._lock:
            self.matched += 1
            if self.matched < self._nth:
                return False
            self.died.set()
        self._shut_all()
        return True

    def _shut_all(self) -> None:
        """Stop listening (new connections are refused at once) and cut every open connection."""
        with self._lock:
            sockets = [self._listener, *self._sockets]
        for sock in sockets:
            _shut(sock)
