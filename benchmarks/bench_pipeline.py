"""Wall time of the local end-to-end run (`locgen run`), stage by stage.

Runs the end-to-end pipeline on the bundled sample data through kfp.local in a fresh temporary store
(so every tile is rendered: nothing is reused), and reads each task's own `seconds` metric (the stage's
work, from its start to its artifacts published) beside the whole run's wall time (which adds
kfp.local's start of each task's subprocess). `--pretrained` times the generation pipeline with the
bundled model instead; `--param NAME=VALUE` (repeatable) changes a pipeline parameter.

Prints one JSON document. Usage: python benchmarks/bench_pipeline.py [--pretrained] [--param steps=500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from pipeline.local import run_sample


def task_seconds(pipeline_root: Path) -> dict[str, float]:
    """Each task's `seconds` metric, by run/task (a shard's task under its loop iteration)."""
    seconds = {}
    for output in sorted(pipeline_root.rglob("executor_output.json")):
        for listing in json.loads(output.read_text()).get("artifacts", {}).values():
            metadata = listing["artifacts"][0].get("metadata", {})
            if "seconds" in metadata:
                seconds[output.parent.relative_to(pipeline_root).as_posix()] = metadata["seconds"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--keep", type=Path, help="an empty folder to run in and keep (default: a temporary one)")
    args = parser.parse_args()
    overrides = {name: json.loads(value) if value[:1] in "0123456789[{" else value
                 for name, _, value in (text.partition("=") for text in args.param)}
    with tempfile.TemporaryDirectory() as folder:
        store = args.keep or Path(folder)
        started = time.perf_counter()
        where = run_sample(store, overrides, args.pretrained)
        wall_s = time.perf_counter() - started
        stages = task_seconds(store / "kfp")
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "pretrained": args.pretrained, "parameters": overrides, "wall_s": round(wall_s, 1),
                      "stage_s": stages, "stage_sum_s": round(sum(stages.values()), 1), "points": where["points"]},
                     indent=2))


if __name__ == "__main__":
    main()
