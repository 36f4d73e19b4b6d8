"""http(s) downloads made with urllib: bounded in size and time, and why one failed, in one line."""

from __future__ import annotations

import http.client
import socket
import threading
import typing
import urllib.error
import urllib.request
from collections.abc import Callable

from components.core.errors import LocgenError, one_line

# What urlopen and reading its response raise: URLError, HTTPError and timeouts are OSErrors.
REQUEST_ERRORS = (OSError, http.client.HTTPException)
MB = 1_000_000  # the megabytes of the size caps: decimal, as download sizes are usually shown
PIECE_BYTES = 1 << 20  # the most one read takes; a read returns what one receive brought, however little


class DownloadLimits(typing.NamedTuple):
    """What one download may take: `max_mb` megabytes of body, `deadline_s` seconds from the request to the
    last byte (redirects and headers included), and no single wait on the server longer than `stall_s`
    (connecting, each read). `options`: the settings that raise `max_mb` and `deadline_s`, named in the error."""

    max_mb: float
    deadline_s: float
    stall_s: float
    options: tuple[str, str]


def download(request: str | urllib.request.Request, source: str, limits: DownloadLimits,
             write: Callable[[bytes], object]) -> int:
    """Request an http(s) URL and hand its body to `write` as it arrives; the body's size in bytes.

    A body announced or found larger than `limits.max_mb`, or not complete `limits.deadline_s` after the
    request, is a LocgenError naming `source` and the setting that raises the bound. Other failures (an
    HTTPError, a stall, a refused or broken connection) are raised as urllib raises them, for the caller,
    who knows what to advise.
    """
    deadline = _Deadline(limits.deadline_s)
    opener = urllib.request.OpenerDirector()  # http(s) alone: a redirect elsewhere (ftp:, file:) is refused
    for handler in (urllib.request.UnknownHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPRedirectHandler(), _WatchedHandler(deadline),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    try:
        with deadline, opener.open(request, timeout=min(limits.stall_s, limits.deadline_s)) as response:
            size_bytes = _read_body(response, source, limits, write)
    except REQUEST_ERRORS:
        if deadline.expired:  # the error is our own shutdown of the socket
            raise _late(source, limits) from None
        raise
    if deadline.expired:  # the end of the body was our shutdown, not the server's
        raise _late(source, limits)
    return size_bytes


def _read_body(response: http.client.HTTPResponse, source: str, limits: DownloadLimits,
               write: Callable[[bytes], object]) -> int:
    max_bytes = int(limits.max_mb * MB)
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) > max_bytes:
        raise LocgenError(f"{source}: announces {int(announced) / MB:.1f} MB, more than the {limits.max_mb:g} MB "
                          f"a download may take; if that is right, raise {limits.options[0]}")
    size_bytes = 0
    while piece := response.read1(PIECE_BYTES):  # what one receive brought: the cap is seen at once
        size_bytes += len(piece)
        if size_bytes > max_bytes:
            raise LocgenError(f"{source}: sent more than the {limits.max_mb:g} MB a download may take; "
                              f"if the answer is that large, raise {limits.options[0]}")
        write(piece)
    return size_bytes


def _late(source: str, limits: DownloadLimits) -> LocgenError:
    return LocgenError(f"{source}: the download was not done after {limits.deadline_s:g} s; retry later, or "
                       f"raise {limits.options[1]}")


class _Deadline:
    """Shuts down every socket of one download when its time is up, which ends any wait on it at once:
    a per-read timeout alone lets a server that sends a byte now and then hold a download forever."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown, also under TLS: ssl's own would drop its state under a reader
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


def _watched(connection_class: type[http.client.HTTPConnection], deadline: _Deadline):
    """A maker of `connection_class` connections whose sockets `deadline` watches."""

    def connection(*args, **kwargs) -> http.client.HTTPConnection:
        made = connection_class(*args, **kwargs)
        connect = made.connect

        def connect_watched() -> None:
            connect()
            deadline.watch(made.sock)

        made.connect = connect_watched
        return made

    return connection


class _WatchedHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's http and https handlers, on watched connections."""

    def __init__(self, deadline: _Deadline) -> None:
        urllib.request.HTTPSHandler.__init__(self)
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(_watched(http.client.HTTPConnection, self._deadline), req)

    def https_open(self, req):
        return self.do_open(_watched(http.client.HTTPSConnection, self._deadline), req, context=self._context)


def failure_reason(error: BaseException) -> str:
    """`HTTP 404 Not Found` for an error status; else the socket's reason (`timed out`, `[Errno 111]
    Connection refused`) or the error itself, on one line."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    return one_line(getattr(error, "reason", error))


def timed_out(error: BaseException) -> bool:
    """Whether the request failed by waiting too long (to connect, or for the answer)."""
    return isinstance(getattr(error, "reason", error), TimeoutError)
