"""Extraction throughput: 256 px tiles per second on one core, from a local tile set to a CSV.

The tile set: the tiles that cover the Kotka extract (4.9 km2) at 1 m/px, overlapping by 32 px as
a generation grid would, with --points random vehicle positions (1,000: about 10 dots per tile, a
dense scooter city), rendered by `locgen render`; the `a` tiles (with dots) are extracted, as a
generator's output would be.
Cases, side by side in one run, each the median of 5 runs after a warm-up:
- `extract`: the whole stage (read, decode, detect, merge, georeference, write the CSV);
- `decode_detect`: PNG decoding and dot detection alone, on tiles already in memory.

Prints one JSON document. Usage: python benchmarks/bench_extract.py [--points N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from components.core.detect import detect_markers
from components.core.geo import LonLatBounds
from components.core.pngmeta import decode_png
from components.core.storage import open_store
from components.core.tileset import read_manifest
from components.extract.job import ExtractSettings, extract
from components.render.job import RenderSettings, render

ROOT = Path(__file__).resolve().parents[1]
KOTKA_PBF = ROOT / "data" / "osm" / "kotka-karhula.osm.pbf"
KOTKA = LonLatBounds(26.93, 60.52, 26.97, 60.54)
REPEATS = 5  # this machine's speed wanders between runs: report the median, best and worst


def make_tile_set(folder: str, points: int) -> str:
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(KOTKA.west, KOTKA.east, points), rng.uniform(KOTKA.south, KOTKA.north, points)
    points_csv = Path(folder) / "points.csv"
    points_csv.write_text("latitude,longitude\n" + "".join(f"{b},{a}\n" for a, b in zip(lon, lat)))
    render(RenderSettings(osm=[str(KOTKA_PBF)], out=f"{folder}/tiles", bbox=KOTKA, city="kotka", m_per_px=1.0,
                          overlap_px=32, locations=[str(points_csv)], progress=False))
    return f"{folder}/tiles"


def rates(run, tiles: int) -> dict:
    run()  # warm-up
    per_s = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        per_s.append(tiles / (time.perf_counter() - started))
    return {"median_tiles_per_s": round(statistics.median(per_s), 1), "best_tiles_per_s": round(max(per_s), 1),
            "worst_tiles_per_s": round(min(per_s), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1000, help="vehicle positions in the 4.9 km2 area")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tiles_uri = make_tile_set(folder, args.points)
        store = open_store(tiles_uri)
        rows = [row for row in read_manifest(store) if row["domain"] == "a"]  # what a generator gives
        pngs = [store.get_bytes(row["path"]) for row in rows]
        dots = sum(len(detect_markers(decode_png(png))) for png in pngs)
        settings = ExtractSettings(tiles=tiles_uri, out=[f"{folder}/points.csv"], domain="a", progress=False)
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                       f"{platform.python_version()}, OpenCV {cv2.__version__}",
            "tiles": len(rows), "dots_per_tile": round(dots / len(rows), 1),
            "extract": rates(lambda: extract(settings), len(rows)),
            "decode_detect": rates(lambda: [detect_markers(decode_png(png)) for png in pngs], len(rows)),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
