"""Why an http(s) request made with urllib failed, in words that fit in a one-line error."""

from __future__ import annotations

import http.client
import urllib.error

from components.core.errors import one_line

# What urlopen and reading its response raise: URLError, HTTPError and timeouts are OSErrors.
REQUEST_ERRORS = (OSError, http.client.HTTPException)


def failure_reason(error: BaseException) -> str:
    """`HTTP 404 Not Found` for an error status; else the socket's reason (`timed out`, `[Errno 111]
    Connection refused`) or the error itself, on one line."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    return one_line(getattr(error, "reason", error))


def timed_out(error: BaseException) -> bool:
    """Whether the request failed by waiting too long (to connect, or for the answer)."""
    return isinstance(getattr(error, "reason", error), TimeoutError)
