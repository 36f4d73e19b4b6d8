"""A table of points as a file: CSV, or an RFC 7946 GeoJSON FeatureCollection, local or s3://.

A table is its column names and its rows, one value per column; the first two columns are
`latitude` and `longitude`, in degrees (WGS84). The CSV has a header row and writes every float in
full (repr round-trips exactly); the GeoJSON has one Point feature per row, in lon/lat order, with
the other columns as its properties. Either file is written whole in one step (the store's
publish): a reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.core.errors import LocgenError
from components.core.storage import Store, open_file_uri

CONTENT_TYPES = {".csv": "text/csv", ".geojson": "application/geo+json"}


def points_file(out: str) -> tuple[Store, str]:
    """The store and key of a FILE.csv or FILE.geojson (local or s3://); another suffix is an error."""
    if Path(out).suffix.lower() not in CONTENT_TYPES:
        raise LocgenError(f"{out}: unknown output format; give a path ending in .csv or .geojson")
    return open_file_uri(out)


def write_points(out: str, columns: Sequence[str], rows: Sequence[Sequence], *, attribution: str | None = None,
                 decimals: int | None = None) -> None:
    """Write the table to `out`, a FILE.csv or FILE.geojson, as the module docstring says.

    GeoJSON only: `decimals` rounds the coordinates (7 decimals of a degree are about 1 cm; None
    keeps them whole), `attribution` is written as the collection's `attribution` member.
    """
    store, key = points_file(out)
    suffix = Path(key).suffix.lower()
    text = _csv_text(columns, rows) if suffix == ".csv" else _geojson_text(columns, rows, attribution, decimals)
    store.publish_bytes(key, text.encode("utf-8"), CONTENT_TYPES[suffix])


def _csv_text(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)  # a float is written as its repr
    return buffer.getvalue()


def _geojson_text(columns: Sequence[str], rows: Sequence[Sequence], attribution: str | None,
                  decimals: int | None) -> str:
    features = []
    for lat, lon, *values in rows:
        if decimals is not None:
            lon, lat = round(lon, decimals), round(lat, decimals)
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
                         "properties": dict(zip(columns[2:], values, strict=True))})
    collection = {"type": "FeatureCollection"}
    if attribution is not None:
        collection["attribution"] = attribution  # ODbL: what is made from OSM data keeps its attribution
    collection["features"] = features
    # allow_nan=False: NaN is not JSON, and a file other tools cannot parse is worse than an error here.
    return json.dumps(collection, ensure_ascii=False, allow_nan=False)


def read_scored_points(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) lon/lat and (N,) scores of a points file that locgen extract wrote (CSV or GeoJSON)."""
    store, key = points_file(uri)
    text = store.get_bytes(key).decode("utf-8-sig")
    if Path(key).suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = [{**feature["properties"], "longitude": feature["geometry"]["coordinates"][0],
                 "latitude": feature["geometry"]["coordinates"][1]} for feature in json.loads(text)["features"]]
    if rows and "score" not in rows[0]:
        raise LocgenError(f"{uri}: no score column; give the points file that locgen extract wrote")
    lonlat = np.array([[float(row["longitude"]), float(row["latitude"])] for row in rows]).reshape(-1, 2)
    return lonlat, np.array([float(row["score"]) for row in rows])
