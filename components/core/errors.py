"""The one error type a user sees: a single line that names the input and the fix."""


class LocgenError(Exception):
    """Bad input or an unreachable service. The CLI prints `error: <message>` and exits 2.

    Messages name the offending input and say how to fix it, in one line.
    """
