"""What `locgen run` shows of kfp.local's output: a line as each task starts and ends, the task's own `locgen:`
lines, and nothing of kfp.local's dumps; the log file gets every byte. The text below is kfp.local's, as it
prints it (its colours included), cut from a real run's log."""

import io

from pipeline.runlog import RunLog

C, R = "\x1b[96m", "\x1b[0m"
KFP_TEXT = f"""03:23:58.089 - INFO - Executing task {C}'render-tiles'{R}
03:23:58.090 - INFO - Streamed logs:

    Looking for component `render_tiles` in --component_module_path `/tmp/tmpx/ephemeral_component.py`
    locgen: render kotka: 16/25 tiles (64%), 220 tiles/s, 0 s left
    locgen: render kotka: 25/25 tiles (100%), 339 tiles/s
    locgen: done in 1 s: 25 tiles, 25 rendered
    I1204 03:23:59.100 executor_main.py:120] Wrote executor output file to /tmp/outputs.json
03:23:59.589 - INFO - Task {C}'render-tiles'{R} finished with status \x1b[92mSUCCESS{R}
03:23:59.590 - INFO - Task {C}'render-tiles'{R} outputs:
    tiles: Dataset( name='tiles',
                    uri='/tmp/runp/kfp/locgen-generate/render-tiles/tiles',
                    metadata={{'city': 'kotka', 'tiles': 25}} )
03:23:59.593 - INFO - Executing task {C}'importer'{R}
03:23:59.600 - INFO - Task {C}'importer'{R} finished with status \x1b[92mSUCCESS{R}
03:24:00.001 - INFO - Executing task {C}'render-city-2'{R}
    Traceback (most recent call last):
      File "/work/main/components/render/job.py", line 175, in render
    components.core.errors.LocgenError: osm:amenity=no_such_amenity: gives no locations; check the source
03:24:01.002 - ERROR - Task {C}'render-city-2'{R} finished with status \x1b[91mFAILURE{R}
"""
SHOWN = ["locgen run: render tiles ...",
         "locgen: render kotka: 16/25 tiles (64%), 220 tiles/s, 0 s left",
         "locgen: render kotka: 25/25 tiles (100%), 339 tiles/s",
         "locgen run: render tiles: done in 1 s: 25 tiles, 25 rendered",
         "locgen run: the model ...",
         "locgen run: the model: done",
         "locgen run: render training pairs ...",
         "locgen run: render training pairs: FAILED: osm:amenity=no_such_amenity: gives no locations; check the "
         "source"]


def _run(text: str, verbose: bool, pieces: int) -> tuple[str, str]:
    log_file, person = io.StringIO(), io.StringIO()
    run_log = RunLog(log_file, person, verbose)
    size = len(text) // pieces + 1  # kfp.local writes in pieces that need not end at a line's end
    for start in range(0, len(text), size):
        run_log.write(text[start:start + size])
    return log_file.getvalue(), person.getvalue()


def test_a_person_sees_a_line_a_task_and_its_own_lines_and_the_log_file_everything():
    for pieces in (1, 7, len(KFP_TEXT)):
        logged, shown = _run(KFP_TEXT, verbose=False, pieces=pieces)
        assert logged == KFP_TEXT
        assert shown.splitlines() == SHOWN


def test_verbose_shows_everything_with_the_task_lines():
    logged, shown = _run(KFP_TEXT, verbose=True, pieces=3)
    assert logged == KFP_TEXT
    task_lines = [line for line in SHOWN if line.startswith("locgen run: ")]
    assert [line for line in shown.splitlines() if line.startswith("locgen run: ")] == task_lines
    assert [line for line in shown.splitlines() if not line.startswith("locgen run: ")] == KFP_TEXT.splitlines()
