"""The one error type a user sees: a single line that names the input and the fix."""

import re

# The fix for a pipeline task that was given GPUs and sees none (train and generate say it alike).
GPU_NODE_FIX = ("schedule it on a node with NVIDIA GPUs and the NVIDIA device plugin (OPERATORS.md, GPUs), or "
                "compile the pipelines for a cluster without GPUs (locgen compile --cpu-only)")


# The user and password of a URL (http://user:secret@host/, an AWS_ENDPOINT_URL or a --host with credentials):
# what comes between "//" and the first "@" before any "/".
_URL_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


def redacted(text: str) -> str:
    """`text` with the user and password of every URL in it replaced by ***: what is shown (errors, logs, the
    summary) never carries credentials."""
    return _URL_USERINFO.sub("***@", text)


class LocgenError(Exception):
    """Bad input or an unreachable service. The CLI prints `error: <message>` and exits 2.

    Messages name the offending input and say how to fix it, in one line.
    """


def one_line(text: object, limit: int | None = None) -> str:
    """`text` with all whitespace, newlines included, collapsed to single spaces, so that a server's or
    the OS's message keeps an error on one line; cut to `limit` characters when given."""
    return " ".join(str(text).split())[:limit]
