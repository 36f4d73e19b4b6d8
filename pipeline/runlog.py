"""What a person sees of a pipeline run on this machine (`locgen run`), and the log that keeps all of it.

kfp.local prints everything on stdout: each task's start, its streamed output, and a dump of its inputs and
outputs when it ends, thousands of lines for the sample run. `RunLog` takes that text: all of it goes to the
log file; a person gets one line as each task starts, the task's own `locgen:` lines as they come (training
progress, warnings, errors), and as it ends the task's `done in ...` line (steps.timed), or that it failed.
With `verbose`, the whole text as well (then the task's own lines come once, within it).
"""

from __future__ import annotations

import io
import re
from typing import TextIO

from pipeline.pipelines import IMPORTER_NAME, TASKS
from pipeline.steps import DONE

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r" - INFO - Executing task '([^']+)'")
ENDED = re.compile(r" - (?:INFO|ERROR) - Task '([^']+)' finished with status (\w+)")
OURS = "locgen: "
FAILED_WITH = re.compile(r"^\w+(?:\.\w+)*(?:LocgenError|Error|Exception): (.+)$")  # a traceback's last line


def task_display_name(task: str) -> str:
    """The name the Kubeflow UI shows for a kfp.local task name ('render-city-2' -> 'render training pairs')."""
    component = re.sub(r"-\d+$", "", task).replace("-", "_")
    return IMPORTER_NAME if component == "importer" else TASKS[component][0] if component in TASKS else task


class RunLog(io.TextIOBase):
    """A text stream for kfp.local's stdout: see the module docstring."""

    def __init__(self, log_file: TextIO, person: TextIO, verbose: bool = False) -> None:
        self._file, self._person, self._verbose = log_file, person, verbose
        self.done: dict[str, str] = {}  # each task's `done in ...` line, by its display name (the last one's)
        self._partial = ""
        self._made: str | None = None
        self._failure: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._file.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()  # shown once whole: a task's line never lands in the middle of one
        for line in lines:
            if self._verbose:
                self._person.write(line + "\n")
            self._read(ANSI.sub("", line).strip())
        return len(text)

    def flush(self) -> None:
        self._file.flush()
        self._person.flush()

    def close(self) -> None:
        """The last line, should it have no newline, then the log file."""
        if not self.closed:
            self.write("\n" if self._partial else "")
            super().close()  # flushes
            self._file.close()

    def _read(self, line: str) -> None:
        if started := STARTED.search(line):
            self._made = self._failure = None
            self._say(f"{task_display_name(started[1])} ...")
        elif ended := ENDED.search(line):
            name = task_display_name(ended[1])
            if ended[2] == "SUCCESS":
                self.done[name] = self._made or "done"
                self._say(f"{name}: {self.done[name]}")
            else:
                self._say(f"{name}: FAILED" + (f": {self._failure}" if self._failure else ""))
        elif line.startswith(OURS + DONE + " "):
            self._made = line.removeprefix(OURS)
        elif line.startswith(OURS):
            if not self._verbose:
                self._person.write(line + "\n")
        elif failed := FAILED_WITH.match(line):
            self._failure = failed[1]

    def _say(self, text: str) -> None:
        self._person.write(f"locgen run: {text}\n")
        self._person.flush()
