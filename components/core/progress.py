"""Progress a person can follow while a long stage runs: training, rendering, generation, extraction.

On a terminal it is a tqdm bar on stderr. Anywhere else (a pipeline pod's log, `locgen run`, a file)
a bar is unreadable, so it is a plain line through the `components.progress` logger at the first
update, then at least every `every_s` seconds and at the end:

    train: 400/2000 steps (20%), 3.1 steps/s, 8 min 36 s left; loss_d 0.251, loss_g_gan 0.913, loss_nce 1.2

`note` sets the values shown after the semicolon (the latest losses); `say` writes a line at once
(the validation at a checkpoint), above the bar on a terminal.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

log = logging.getLogger("components.progress")
EVERY_S = 30.0  # a plain line at least this often: a pod's log shows the run is alive and how far it is


class Progress:
    def __init__(self, what: str, total: int, unit: str, *, initial: int = 0, enabled: bool = True,
                 every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic,
                 terminal: bool | None = None) -> None:
        self.what, self.total, self.unit, self.done = what, total, unit, initial
        self.enabled, self.every_s, self._clock = enabled, every_s, clock
        self._values: dict[str, float] = {}
        self._started_s = self._last_line_s = clock()
        self._first = initial  # a resumed run's rate counts only what this run did
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar = tqdm(total=total, initial=initial, unit=unit, desc=what) if enabled and terminal else None
        self._lines = enabled and not terminal
        self._line_count = None  # the count the last plain line showed; None: no line yet

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def update(self, count: int = 1) -> None:
        if not count:
            return
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._lines and (self._line_count is None or self._clock() - self._last_line_s >= self.every_s):
            self._line()

    def note(self, **values: float) -> None:
        """The values shown with the progress from now on (the latest losses)."""
        self._values = values
        if self._bar is not None:
            self._bar.set_postfix({name: f"{value:.3f}" for name, value in values.items()})

    def say(self, text: str) -> None:
        """One line now, about the stage (not its count)."""
        if self._bar is not None:
            self._bar.write(f"{self.what}: {text}", file=sys.stderr)
        elif self._lines:
            log.info("%s: %s", self.what, text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._lines and self._line_count not in (None, self.done):  # the end, unless just shown
            self._line()

    def _line(self) -> None:
        now_s = self._clock()
        self._last_line_s, self._line_count = now_s, self.done
        log.info("%s", self.text(now_s))

    def text(self, now_s: float) -> str:
        """The plain line: count of total, share, rate, time left, and the noted values."""
        parts = [f"{self.what}: {self.done}/{self.total} {self.unit}s ({100 * self.done / max(self.total, 1):.0f}%)"]
        elapsed_s = now_s - self._started_s
        rate = (self.done - self._first) / elapsed_s if elapsed_s > 0 else math.nan
        if math.isfinite(rate) and rate > 0:
            parts.append(f"{rate:.3g} {self.unit}s/s")
            if self.done < self.total:
                parts.append(f"{duration_text((self.total - self.done) / rate)} left")
        text = ", ".join(parts)
        if self._values:
            text += "; " + ", ".join(f"{name} {value:.3f}" for name, value in self._values.items())
        return text


def duration_text(seconds: float) -> str:
    """12 s, 8 min 36 s, 2 h 05 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
