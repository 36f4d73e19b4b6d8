"""The extract stage as one call: a tile set -> one point per dot -> CSV and GeoJSON files (+ a preview).

Tiles are georeferenced by the tile set's manifest, or, for a folder of PNGs without one, by each
PNG's own `locgen:georef` text chunk. Every point goes from its dot's sub-pixel centroid to
lat/lon through the geo core, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.core.detect import (
    REJECTION_REASONS,
    DetectSettings,
    Found,
    find_markers,
    second_pass,
)
from components.core.errors import LocgenError
from components.core.geo import Tile, lonlat_from_3857
from components.core.markers import MarkerRange
from components.core.points import points_file, write_points
from components.core.progress import Progress
from components.core.provenance import OSM_ATTRIBUTION
from components.core.settings import Checked, Within, setting
from components.core.storage import Store, open_file_uri, open_store
from components.core.tileset import (
    GEOREF_TEXT_KEY,
    MANIFEST_KEY,
    check_row,
    decode_tile,
    fetch_all,
    owned_detections,
    read_georef,
    read_manifest,
    tile_of_row,
)
from components.extract.merge import TilePoint, merge_duplicates, merged_position
from components.extract.preview import Mosaic

_DETECT = DetectSettings()  # the detector's defaults
CSV_COLUMNS = ("latitude", "longitude", "tile_id", "score", "city")


def _hue_deg(text: str, what: str) -> tuple[float, float]:
    try:
        low, high = (float(value) for value in text.split(","))
    except ValueError:
        raise LocgenError(f"{what} {text}: give LOW,HIGH in degrees, e.g. 260,340") from None
    if not low <= high:
        raise LocgenError(f"{what} {text}: give LOW,HIGH with LOW at most HIGH, e.g. 260,340 (a range across 0, "
                          "red, is not supported)")
    return low, high


@dataclass
class ExtractSettings(Checked):
    """Everything `locgen extract` takes, with its defaults and help, in one place (components.core.settings)."""

    tiles: str = setting(help="tile set: local path or s3://bucket/prefix", metavar="URI")
    out: list[str] = setting(help="FILE.csv or FILE.geojson (local or s3://); repeatable: one extraction writes "
                             "them all", metavar="FILE", output=False)
    # a dot cut by a tile border comes back as two parts up to ~one dot radius apart
    dedupe_m: float = setting(6.0, help="merge a dot seen in two tiles within this geodesic distance "
                              "(%(default)s m)", within=Within(0))
    preview: str | None = setting(None, help="also write a preview: the points over the plain map (the tiles a "
                                             "generator translated, else these)", metavar="FILE.png", output=False)
    preview_generated: str | None = setting(None, help="also write the points over these tiles themselves (what "
                                                       "a generator painted)", metavar="FILE.png", output=False)
    # a rendered set holds a and b
    domain: str | None = setting(None, help="only the tiles of this domain, e.g. a (default: every tile)")
    hue_deg: tuple[float, float] = setting(_DETECT.marker_range.hue_deg, parse=_hue_deg, metavar="LOW,HIGH",
                                           help="marker hue range in degrees (%(default)s)", within=Within(0, 360))
    min_saturation: float = setting(_DETECT.marker_range.min_saturation,
                                    help="least saturation of a marker pixel, 0-1 (%(default)s)", within=Within(0, 1))
    min_value: float = setting(_DETECT.marker_range.min_value,
                               help="least brightness of a marker pixel, 0-1 (%(default)s)", within=Within(0, 1))
    min_area_px: int = setting(_DETECT.min_area_px, help="smallest dot in pixels (%(default)s)", within=Within(1))
    count: int | None = setting(None, metavar="N", group="count", within=Within(1),
                                help="keep the N best-scoring points (how marker-like and how magenta), e.g. the "
                                     "fleet's size (default: one point per dot)")
    per_km2: float | None = setting(None, metavar="D", group="count", within=Within(0, above=True),
                                    help="keep the best-scoring points at D per km2 of the area with map data")
    progress: bool = setting(True, help="a progress bar on stderr", cli=False, output=False)

    @property
    def detect(self) -> DetectSettings:
        """The detector's settings: these, and its defaults for the rest."""
        marker_range = MarkerRange(tuple(self.hue_deg), self.min_saturation, self.min_value)
        return _DETECT._replace(marker_range=marker_range, min_area_px=self.min_area_px)


def extract(settings: ExtractSettings) -> dict:
    """Extract the points of a tile set once, write them to every file of `settings.out` (and the
    preview); returns a summary."""
    _check_out(settings)
    store = open_store(settings.tiles)
    rows = [row for row in _tile_rows(store) if settings.domain in (None, row.get("domain"))]
    if not rows:
        raise LocgenError(f"--domain {settings.domain}: no tile of {store.uri} is of that domain; "
                          "leave --domain out to read every tile")
    tiles = [tile_of_row(row) for row in rows]
    mosaic = Mosaic(tiles) if settings.preview_generated else None
    found = []
    with Progress("extract", len(rows), "tile", enabled=settings.progress) as bar:
        for index, (row, png) in enumerate(zip(rows, fetch_all(store, [row["path"] for row in rows]))):
            rgb = decode_tile(png, store.url(row["path"]), row)
            found.append(find_markers(rgb, settings.detect, marker_radius_px=row.get("marker_radius_px")))
            if mosaic is not None:
                mosaic.paste(tiles[index], rgb, row.get("core_inset_px", 0.0))
            bar.update()
    _split_crowded_blobs(store, rows, found, settings.detect)
    detections = [tile_found.detections for tile_found in found]
    owned = [owned_detections(row, tile, found_here) for row, tile, found_here in zip(rows, tiles, detections)]
    # The score ranks points: how magenta a dot is, times how well a marker's disc explains it.
    points = [TilePoint(*(float(v) for v in tiles[index].px_to_3857(d.col, d.row)), index, d.area_px,
                        d.score * d.roundness, d.touches_edge)
              for index, tile_detections in enumerate(owned) for d in tile_detections]
    clusters = merge_duplicates(points, [tile.bounds_3857 for tile in tiles], settings.dedupe_m)
    records = _best(settings, [_record(points, cluster, rows) for cluster in clusters], rows)
    table = [(record["latitude"], record["longitude"], record["tile_id"], round(record["score"], 4), record["city"])
             for record in records]
    for out in settings.out:  # the points come from OSM-based tiles, so they carry its attribution
        write_points(out, CSV_COLUMNS, table, attribution=OSM_ATTRIBUTION)
    positions_3857 = np.array([record["xy_3857"] for record in records]).reshape(-1, 2)
    if settings.preview:
        _publish_png(settings.preview, _plain_mosaic(store, rows, tiles).png(positions_3857))
    if mosaic is not None:
        _publish_png(settings.preview_generated, mosaic.png(positions_3857))
    detected = sum(map(len, detections))
    rejected = {reason: sum(tile_found.rejected[reason] for tile_found in found) for reason in REJECTION_REASONS}
    return {"tiles": len(rows), "detections": detected, "outside": detected - len(points), "points": len(records),
            "rejected_blobs": rejected, "out": settings.out, "preview": settings.preview,
            "preview_generated": settings.preview_generated}


def _plain_mosaic(store: Store, rows: list[dict], tiles: list[Tile]) -> Mosaic:
    """The plain map under the tiles: for generated tiles the plain ones they were made from, else the
    tiles themselves; each tile's core."""
    mosaic = Mosaic(tiles)
    plain: dict[str, list[tuple[int, str]]] = {}  # by tile set: (tile index, key)
    for index, row in enumerate(rows):
        if "generated_from_tiles" in row:
            plain.setdefault(row["generated_from_tiles"], []).append((index, row["generated_from"]))
        else:
            plain.setdefault(store.uri, []).append((index, row["path"]))
    for uri, tiles_keys in plain.items():
        source = store if uri == store.uri else open_store(uri)
        indices, keys = zip(*tiles_keys)
        for index, key, png in zip(indices, keys, fetch_all(source, list(keys))):
            mosaic.paste(tiles[index], decode_tile(png, source.url(key), rows[index]),
                         rows[index].get("core_inset_px", 0.0))
    return mosaic


def _publish_png(uri: str, png: bytes) -> None:
    preview_store, preview_key = open_file_uri(uri)
    preview_store.put_bytes(preview_key, png, "image/png")


def _split_crowded_blobs(store: Store, rows: list[dict], found: list[Found], settings: DetectSettings) -> None:
    """Detect again, knowing the typical dot, where `second_pass` says (the tiles are read again: a
    tile set may not fit in memory)."""
    dot_core_px, again = second_pass(found)
    for index, png in zip(again, fetch_all(store, [rows[index]["path"] for index in again])):
        found[index] = find_markers(decode_tile(png, store.url(rows[index]["path"]), rows[index]), settings,
                                    dot_core_px)


def _best(settings: ExtractSettings, records: list[dict], rows: list[dict]) -> list[dict]:
    """The records to write: with a count (or a density over the area with map data), the best-scoring
    ones, in their order; else all."""
    if settings.count is not None:
        keep = settings.count
    elif settings.per_km2 is not None:
        keep = round(settings.per_km2 * mapped_km2(rows))
    else:
        return records
    ranked = sorted(range(len(records)), key=lambda index: (-records[index]["score"], index))
    chosen = set(ranked[:keep])
    return [record for index, record in enumerate(records) if index in chosen]


def mapped_km2(rows: list[dict]) -> float:
    """The ground area, in km2, of the tiles' cores that lies inside the OSM data's extent (a tile
    drawn in two domains counts once)."""
    by_id = {row["id"]: row for row in rows}
    return sum(((row["size_px"] - 2 * row.get("core_inset_px", 0.0)) * row["m_per_px"]) ** 2
               * row.get("data_share", 1.0) for row in by_id.values()) / 1e6


def _check_out(settings: ExtractSettings) -> None:
    """Fail before any work when the points could not be written: no file, or one that is not
    FILE.csv or FILE.geojson; a preview that is not FILE.png (it is written as PNG)."""
    if isinstance(settings.out, str):
        raise TypeError(f"ExtractSettings.out is a list of files, not the string {settings.out!r}")
    if not settings.out:
        raise LocgenError("no output file; give at least one FILE.csv or FILE.geojson (local or s3://)")
    for path in settings.out:
        points_file(path)
    previews = (("--preview", settings.preview), ("--preview-generated", settings.preview_generated))
    for flag, path in previews:
        if path and not path.lower().endswith(".png"):
            raise LocgenError(f"{flag} {path}: a preview is written as a PNG image; give a FILE.png")
    tiles_prefix = open_store(settings.tiles).uri.rstrip("/") + "/"
    for flag, path in [("--out", path) for path in settings.out] + list(previews):
        if path and _file_url(path).startswith(tiles_prefix):
            raise LocgenError(f"{flag} {path}: lies inside the tile set of --tiles, which is read, not written; "
                              "write it outside that folder")


def _file_url(path: str) -> str:
    """The full URI (or absolute path) of one output file, as its store names it."""
    store, key = open_file_uri(path)
    return store.url(key)


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
        georef = read_georef(png)
    except ValueError as error:
        raise LocgenError(f"{store.url(key)}: {error}; remove it or render the tile again") from None
    if georef is None:
        raise LocgenError(f"{store.url(key)}: no georeference (no '{GEOREF_TEXT_KEY}' PNG text chunk); "
                          f"give the tile set with its {MANIFEST_KEY}, or tiles that locgen wrote")
    return check_row({**georef, "path": key}, f"{store.url(key)} ('{GEOREF_TEXT_KEY}')")


def _record(points: list[TilePoint], cluster: list[int], rows: list[dict]) -> dict:
    """One output point: the merged position, and the tile, score and city of its largest detection."""
    x_3857, y_3857 = merged_position(points, cluster)
    lon, lat = lonlat_from_3857(x_3857, y_3857)
    largest = max(cluster, key=lambda index: points[index].area_px)
    row = rows[points[largest].tile_index]
    return {"latitude": lat, "longitude": lon, "tile_id": row["id"], "score": points[largest].score,
            "city": row["city"], "xy_3857": (x_3857, y_3857)}
