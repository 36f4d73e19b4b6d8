"""Where a generator paints its dots within a tile, and what an overlap between area tiles costs
and buys: the measurement behind the default `--overlap-px`.

1. Edge profile: the bundled generator's dots on tiles rendered without overlap, as a density per
   pixel by distance from the nearest tile edge, relative to the density 64 px or more inside.
   A generator pads its input at the border, so it paints more (or fewer) dots there; the overlap
   must be at least twice the depth of that band, so that every core (the tile less half the
   overlap on every side) stays clear of it.
2. Per overlap: the points `locgen extract` returns (each from the one tile whose core holds it),
   the density within 6 px of any tile edge of the set against the rest, the pairs of points
   closer than 6 m (a dot counted twice), and the cost in tiles per km2 and translated tiles/s.

Measured on a training city (Helsinki, the 4 km2 extract in ../shared/data/osm, or the bundled
one), never on a benchmark's held-out city. Prints one JSON document.

Usage: python benchmarks/bench_seams.py [--osm FILE] [--bbox W,S,E,N] [--overlaps 0,16,32,48,64]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from components.core.detect import detect_markers
from components.core.geo import lonlat_to_3857, parse_bbox
from components.core.storage import open_store
from components.core.tileset import decode_tile, fetch_all, read_manifest, tile_of_row
from components.extract.job import ExtractSettings, extract
from components.infer.job import generate
from components.infer.settings import GenerateSettings
from components.render.job import RenderSettings, render

ROOT = Path(__file__).resolve().parent.parent
WIDE_HELSINKI = ROOT.parent / "shared" / "data" / "osm" / "helsinki-center-4km2-2019.osm.pbf"
BUNDLED_HELSINKI = ROOT / "data" / "osm" / "helsinki-center.osm.pbf"
WIDE_BBOX = "24.9310,60.1600,24.9575,60.1835"  # inside the 4 km2 extract on every side
BUNDLED_BBOX = "24.9360,60.1650,24.9525,60.1780"
BANDS_PX = (0, 4, 8, 16, 24, 32, 48, 64, 128)  # edges of the distance-to-edge bins
NEAR_EDGE_PX = 6


def edge_profile(tiles_uris: list[str], size_px: int) -> dict:
    """Dots per pixel by distance from the nearest tile edge, relative to the deep interior, over the
    generated tiles of several grids (shifted against the map, so edges fall on other streets)."""
    rows, distances = [], []
    for tiles_uri in tiles_uris:
        store = open_store(tiles_uri)
        grid_rows = read_manifest(store)
        rows += grid_rows
        for row, png in zip(grid_rows, fetch_all(store, [row["path"] for row in grid_rows])):
            for dot in detect_markers(decode_tile(png, row["path"], row)):
                distances.append(min(dot.col, dot.row, size_px - dot.col, size_px - dot.row))
    distances = np.array(distances)
    pixels = [_band_pixels(size_px, low, high) for low, high in zip(BANDS_PX[:-1], BANDS_PX[1:])]
    counts = [int(((distances >= low) & (distances < high)).sum()) for low, high in zip(BANDS_PX[:-1], BANDS_PX[1:])]
    deep = distances >= BANDS_PX[-2]
    deep_density = deep.sum() / (_band_pixels(size_px, BANDS_PX[-2], size_px / 2) * len(rows))
    return {"tiles": len(rows), "dots": int(len(distances)),
            "bands": [{"from_px": low, "to_px": high, "dots": count,
                       "relative_density": round(count / (area * len(rows)) / deep_density, 2)}
                      for low, high, count, area in zip(BANDS_PX[:-1], BANDS_PX[1:], counts, pixels)]}


def _band_pixels(size_px: int, low: float, high: float) -> float:
    """Pixels of a tile at least `low` and less than `high` from its nearest edge."""
    def inner(depth: float) -> float:
        return max(size_px - 2 * depth, 0.0) ** 2
    return inner(low) - inner(high)


def seams(tiles_uri: str, points_csv: str) -> dict:
    """Points near any tile edge of the set against the rest, and near-duplicate pairs."""
    rows = [row for row in read_manifest(open_store(tiles_uri)) if row["domain"] == "a"]
    tiles = [tile_of_row(row) for row in rows]
    lines = Path(points_csv).read_text().splitlines()[1:]
    lonlat = np.array([[float(line.split(",")[1]), float(line.split(",")[0])] for line in lines]).reshape(-1, 2)
    near = _near_any_edge(tiles, lonlat)
    # The share of the area within NEAR_EDGE_PX of a tile edge, by sampling the union of the tiles' cores.
    near_share = _near_any_edge(tiles, _core_samples(rows, tiles)).mean()
    ratio = (near.mean() / near_share) / ((1 - near.mean()) / (1 - near_share)) if len(lonlat) else None
    xy = np.stack(lonlat_to_3857(lonlat[:, 0], lonlat[:, 1]), axis=1) if len(lonlat) else np.zeros((0, 2))
    scale = 1 / np.cos(np.radians(lonlat[:, 1].mean())) if len(lonlat) else 1.0
    close_pairs = len(cKDTree(xy).query_pairs(6.0 * scale)) if len(lonlat) else 0
    return {"points": int(len(lonlat)), "near_edge_share_of_points": round(float(near.mean()), 4),
            "near_edge_share_of_area": round(float(near_share), 4),
            "near_edge_density_ratio": None if ratio is None else round(float(ratio), 2),
            "pairs_closer_than_6m": close_pairs}


def _near_any_edge(tiles: list, lonlat: np.ndarray) -> np.ndarray:
    """Whether each lon/lat point lies within NEAR_EDGE_PX of the edge of a tile that holds it."""
    near = np.zeros(len(lonlat), dtype=bool)
    for tile in tiles:
        col, row = tile.lonlat_to_px(lonlat[:, 0], lonlat[:, 1])
        inside = (col >= 0) & (col < tile.size_px) & (row >= 0) & (row < tile.size_px)
        to_edge = np.minimum.reduce([col, row, tile.size_px - col, tile.size_px - row])
        near |= inside & (to_edge < NEAR_EDGE_PX)
    return near


def _core_samples(rows: list[dict], tiles: list, per_side: int = 64) -> np.ndarray:
    """Lon/lat sample points spread evenly over the cores of the tiles (each part of the area once)."""
    points = []
    for row, tile in zip(rows, tiles):
        inset = row.get("core_inset_px", 0.0)
        steps = inset + (np.arange(per_side) + 0.5) / per_side * (tile.size_px - 2 * inset)
        cols, rows_px = np.meshgrid(steps, steps)
        lon, lat = tile.px_to_lonlat(cols.ravel(), rows_px.ravel())
        points.append(np.stack([lon, lat], axis=1))
    return np.concatenate(points)


def shifted_grids(osm: Path, bbox: str, shifts: int, work: Path) -> list[str]:
    """Generated tiles of `shifts` grids without overlap over the bbox, each moved diagonally by a
    further 1 / shifts of a tile against the map."""
    box = parse_bbox(bbox)
    tile_deg_lon = 512 / (111_320 * np.cos(np.radians((box.south + box.north) / 2)))
    tile_deg_lat = 512 / 111_320 * np.cos(np.radians((box.south + box.north) / 2))
    uris = []
    for shift in range(shifts):
        dx, dy = shift / shifts * tile_deg_lon, shift / shifts * tile_deg_lat
        plain, generated = work / f"shift-plain-{shift}", work / f"shift-generated-{shift}"
        render(RenderSettings(osm=[str(osm)], out=str(plain), city="helsinki", overlap_px=0, workers=0,
                              bbox=box._replace(east=box.east - dx, north=box.north - dy), progress=False))
        generate(GenerateSettings(tiles=str(plain), out=str(generated), progress=False))
        uris.append(str(generated))
    return uris


def run_overlap(osm: Path, bbox: str, overlap_px: int, work: Path) -> dict:
    plain, generated = work / f"plain-{overlap_px}", work / f"generated-{overlap_px}"
    render(RenderSettings(osm=[str(osm)], out=str(plain), bbox=parse_bbox(bbox), city="helsinki",
                          overlap_px=overlap_px, workers=0, progress=False))
    started_s = time.perf_counter()
    summary = generate(GenerateSettings(tiles=str(plain), out=str(generated), progress=False))
    generate_s = time.perf_counter() - started_s
    points_csv = work / f"points-{overlap_px}.csv"
    extract(ExtractSettings(tiles=str(generated), out=[str(points_csv)], progress=False))
    box = parse_bbox(bbox)
    area_km2 = ((box.east - box.west) * 111.32 * np.cos(np.radians((box.north + box.south) / 2))
                * (box.north - box.south) * 110.57)
    return {"overlap_px": overlap_px, "tiles": summary["tiles"], "tiles_per_km2": round(summary["tiles"] / area_km2, 2),
            "generate_tiles_per_s": round(summary["tiles"] / generate_s, 2),
            "generate_km2_per_s": round(area_km2 / generate_s, 3), **seams(str(generated), str(points_csv))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--osm", type=Path, default=WIDE_HELSINKI if WIDE_HELSINKI.is_file() else BUNDLED_HELSINKI)
    parser.add_argument("--bbox", help="the area (default: inside the chosen Helsinki extract)")
    parser.add_argument("--overlaps", default="0,16,32,48,64")
    parser.add_argument("--shifts", type=int, default=4, help="grids the edge profile is measured on (4)")
    args = parser.parse_args()
    bbox = args.bbox or (WIDE_BBOX if args.osm == WIDE_HELSINKI else BUNDLED_BBOX)
    with tempfile.TemporaryDirectory() as work:
        profile = edge_profile(shifted_grids(args.osm, bbox, args.shifts, Path(work)), 256)
        cases = [run_overlap(args.osm, bbox, int(overlap), Path(work)) for overlap in args.overlaps.split(",")]
    print(json.dumps({"benchmark": "seams", "osm": args.osm.name, "bbox": bbox, "model": "bundled tiny-helsinki",
                      "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
                      "edge_profile": profile, "cases": cases}, indent=2))


if __name__ == "__main__":
    main()
