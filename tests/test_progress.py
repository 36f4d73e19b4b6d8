"""Progress off a terminal: plain lines at the first update, at least every 30 s, and at the end, with the rate and
the time left measured on the stage's own clock (a fake one here: no test waits)."""

import logging

import pytest

from components.core.progress import Progress, duration_text


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "components.progress"]


def test_plain_lines_come_at_the_start_every_30_s_and_at_the_end(caplog):
    caplog.set_level(logging.INFO, "components.progress")
    clock = Clock()
    with Progress("train", 2000, "step", initial=400, clock=clock, terminal=False) as progress:
        for _ in range(1600):
            clock.now_s += 0.25  # 4 steps/s
            progress.update()
            if progress.done == 1000:
                progress.note(G_GAN=1.2345, D=0.5)
                progress.say("validation at step 1000: place score 0.41")
    lines = _lines(caplog)
    assert lines[0] == "train: 401/2000 steps (20%), 4 steps/s, 6 min 40 s left"
    assert lines[1] == "train: 521/2000 steps (26%), 4 steps/s, 6 min 10 s left"  # 30 s later: 120 steps
    assert "train: validation at step 1000: place score 0.41" in lines
    assert lines[-1] == "train: 2000/2000 steps (100%), 4 steps/s; G_GAN 1.234, D 0.500"
    assert len(lines) == 1 + 400 // 30 + 1 + 1  # the first, one every 30 s of the 400, the validation, the end


def test_no_lines_when_disabled_and_none_twice_for_the_same_count(caplog):
    caplog.set_level(logging.INFO, "components.progress")
    clock = Clock()
    with Progress("render", 3, "tile", clock=clock, terminal=False, enabled=False) as progress:
        progress.update(3)
    assert _lines(caplog) == []
    with Progress("render", 3, "tile", clock=clock, terminal=False) as progress:
        clock.now_s += 2
        progress.update(3)
    assert _lines(caplog) == ["render: 3/3 tiles (100%), 1.5 tiles/s"]


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (59.6, "1 min 0 s"), (516, "8 min 36 s"),
                                           (7500, "2 h 05 min")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration_text(seconds) == text
