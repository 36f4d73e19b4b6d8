"""The extract stage as one call: a tile set -> one point per dot -> CSV or GeoJSON (+ a preview).

Tiles are georeferenced by the tile set's manifest, or, for a folder of PNGs without one, by each
PNG's own `locgen:georef` text chunk. Every point goes from its dot's sub-pixel centroid to
lat/lon through the geo core, exactly.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from components.core.detect import (
    Detection,
    DetectSettings,
    detect_markers,
    holds_more_dots,
    typical_dot_core_px,
)
from components.core.errors import LocgenError
from components.core.geo import m_to_lonlat
from components.core.pngmeta import read_png_text
from components.core.provenance import OSM_ATTRIBUTION
from components.core.storage import Store, open_file_uri, open_store
from components.core.tileset import (
    GEOREF_TEXT_KEY,
    MANIFEST_KEY,
    decode_tile,
    fetch_all,
    read_manifest,
    tile_of_row,
)
from components.extract.merge import TilePoint, merge_duplicates, merged_position
from components.extract.preview import Mosaic

CSV_COLUMNS = ("latitude", "longitude", "tile_id", "score", "city")


@dataclass
class ExtractSettings:
    """Everything `locgen extract` takes, with its defaults, in one place."""

    tiles: str
    out: str  # FILE.csv or FILE.geojson, local or s3://
    dedupe_m: float = 6.0  # a dot cut by a tile border comes back as two parts up to ~one dot radius apart
    preview: str | None = None  # FILE.png, local or s3://
    domain: str | None = None  # only the tiles of this domain (a rendered set holds a and b); None: all
    detect: DetectSettings = field(default_factory=DetectSettings)
    progress: bool = True


def extract(settings: ExtractSettings) -> dict:
    """Extract the points of a tile set, write them (and the preview); returns a summary."""
    writer = _writer(settings.out)
    store = open_store(settings.tiles)
    rows = [row for row in _tile_rows(store) if settings.domain in (None, row.get("domain"))]
    if not rows:
        raise LocgenError(f"--domain {settings.domain}: no tile of {store.uri} is of that domain; "
                          "leave --domain out to read every tile")
    tiles = [tile_of_row(row) for row in rows]
    mosaic = Mosaic(tiles) if settings.preview else None
    detections = []
    with tqdm(total=len(rows), unit="tile", desc="extract", disable=not settings.progress) as bar:
        for index, (row, png) in enumerate(zip(rows, fetch_all(store, [row["path"] for row in rows]))):
            rgb = decode_tile(png, store.url(row["path"]))
            detections.append(detect_markers(rgb, settings.detect))
            if mosaic is not None:
                mosaic.paste(tiles[index], rgb)
            bar.update()
    _split_crowded_blobs(store, rows, detections, settings.detect)
    points = [TilePoint(*(float(v) for v in tiles[index].px_to_m(d.col, d.row)), index, d.area_px, d.score,
                        d.touches_edge)
              for index, tile_detections in enumerate(detections) for d in tile_detections]
    clusters = merge_duplicates(points, [tile.bounds_3857 for tile in tiles], settings.dedupe_m)
    records = [_record(points, cluster, rows) for cluster in clusters]
    out_store, out_key = open_file_uri(settings.out)
    out_store.put_bytes(out_key, writer(records).encode("utf-8"))
    if mosaic is not None:
        preview_store, preview_key = open_file_uri(settings.preview)
        positions_m = np.array([record["xy_m"] for record in records]).reshape(-1, 2)
        preview_store.put_bytes(preview_key, mosaic.png(positions_m), "image/png")
    return {"tiles": len(rows), "detections": len(points), "points": len(records), "out": settings.out,
            "preview": settings.preview}


def _split_crowded_blobs(store: Store, rows: list[dict], detections: list[list[Detection]],
                         settings: DetectSettings) -> None:
    """Detect again, knowing the typical dot, in the tiles with a blob that holds more dots than
    its peaks told apart (a second pass: the typical dot is known only once every tile was seen)."""
    dot_core_px = typical_dot_core_px([d for tile_detections in detections for d in tile_detections])
    if dot_core_px is None:
        return
    crowded = [index for index, tile_detections in enumerate(detections)
               if any(holds_more_dots(d, dot_core_px) for d in tile_detections)]
    for index, png in zip(crowded, fetch_all(store, [rows[index]["path"] for index in crowded])):
        detections[index] = detect_markers(decode_tile(png, store.url(rows[index]["path"])), settings, dot_core_px)


def _writer(out: str):
    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".geojson"):
        raise LocgenError(f"--out {out}: unknown format; give a path ending in .csv or .geojson")
    return _csv_text if suffix == ".csv" else _geojson_text


def _tile_rows(store: Store) -> list[dict]:
    """The tiles to read: the manifest's rows, or the georeference of every PNG under the prefix."""
    if store.exists(MANIFEST_KEY):
        rows = read_manifest(store)
    else:
        keys = sorted(key for key in store.list_keys() if key.endswith(".png"))
        pngs = fetch_all(store, keys)
        rows = [_row_from_png(store, key, png) for key, png in zip(keys, pngs)]
    if not rows:
        raise LocgenError(f"--tiles {store.uri}: no tiles (no {MANIFEST_KEY} and no .png under it); "
                          "give the tile set that locgen render or generate wrote")
    return rows


def _row_from_png(store: Store, key: str, png: bytes) -> dict:
    try:
        text = read_png_text(png)
    except ValueError:
        raise LocgenError(f"{store.url(key)}: not a PNG file; remove it or render the tile again") from None
    if GEOREF_TEXT_KEY not in text:
        raise LocgenError(f"{store.url(key)}: no georeference (no '{GEOREF_TEXT_KEY}' PNG text chunk); "
                          f"give the tile set with its {MANIFEST_KEY}, or tiles that locgen wrote")
    return {**json.loads(text[GEOREF_TEXT_KEY]), "path": key}


def _record(points: list[TilePoint], cluster: list[int], rows: list[dict]) -> dict:
    """One output point: the merged position, and the tile, score and city of its largest detection."""
    x_m, y_m = merged_position(points, cluster)
    lon, lat = m_to_lonlat(x_m, y_m)
    largest = max(cluster, key=lambda index: points[index].area_px)
    row = rows[points[largest].tile_index]
    return {"latitude": lat, "longitude": lon, "tile_id": row["id"], "score": points[largest].score,
            "city": row["city"], "xy_m": (x_m, y_m)}


def _csv_text(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in records:
        writer.writerow([repr(record["latitude"]), repr(record["longitude"]), record["tile_id"],
                         round(record["score"], 4), record["city"]])
    return buffer.getvalue()


def _geojson_text(records: list[dict]) -> str:
    """RFC 7946: lon/lat order; the points come from OSM-based tiles, so they carry its attribution."""
    features = [{"type": "Feature",
                 "geometry": {"type": "Point", "coordinates": [record["longitude"], record["latitude"]]},
                 "properties": {"tile_id": record["tile_id"], "score": round(record["score"], 4),
                                "city": record["city"]}}
                for record in records]
    return json.dumps({"type": "FeatureCollection", "attribution": OSM_ATTRIBUTION, "features": features},
                      ensure_ascii=False)
