"""The tile set contract: PNG tiles under `<domain>/` plus `manifest.jsonl`, one row per tile.

A row holds: id (shared by the a/b twins of a pair), path (key relative to the tile set), domain,
city, size_px, m_per_px (ground resolution at the tile's centre), mpp_3857, exact bounds
(`bounds_3857`, `bounds_lonlat`: west, south, east, north), style version and hash, the sources
with their sha256, `inputs_sha256`, and for domain `a` the exact `points` ([lon, lat]) drawn.

A training set rendered with a held-out box also holds domain `holdout`: plain tiles whose cores
cover the box (as an area render's would), each row with the real `points` inside the tile (not
drawn) and the box itself (`holdout_lonlat`): what training validates its places on.

Where the map is: `data_extent_lonlat`, the boxes the OSM data covers (each file's stated extent,
else its features' extent, or the area fetched from Overpass); `data_share`, the share of the tile
inside them (a tile with 0 is rendered as bare land: nothing is known there); `map_features`, how
many map features touch the tile. An area tile rendered with an overlap records `core_inset_px`:
it owns only the points at least that far inside its edges (`in_core`), so each point comes from
one tile and none from a border band.

Tile keys contain the first hex digits of `inputs_sha256`, the hash of everything that shapes the
pixels: a re-run finds what is already there with one listing and renders only the rest, and a
tile from other inputs never hides under the same name.

`plan.json` says which stage wrote the tile set, from what (`claim_tileset`): a run of the same plan
resumes there, a run of another plan is refused (or, asked to, replaces it), so one tile set's
manifest never silently replaces another's. Written before the first tile and checked again before
the manifest is published, it also stops the slower of two runs of different plans that started at
once: the plan written last wins, the other publishes nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from components import __version__
from components.core.detect import Detection
from components.core.errors import LocgenError, one_line
from components.core.geo import (
    Bounds3857,
    LonLatBounds,
    Tile,
    check_bounds_3857,
    contains,
    lonlat_from_3857,
    mercator_scale,
    tile_from_bounds_3857,
)
from components.core.pngmeta import MAX_TILE_PX, MIN_TILE_PX, decode_png, read_png_text
from components.core.provenance import OSM_ATTRIBUTION
from components.core.storage import Store
from components.core.style import STYLE_VERSION, style_sha256

MANIFEST_KEY = "manifest.jsonl"
PLAN_KEY = "plan.json"
MANIFEST_PARTS = "manifest-parts"  # one part per shard, merged into the manifest when every shard is done
GEOREF_TEXT_KEY = "locgen:georef"
KEY_HASH_CHARS = 16
FETCH_THREADS = 8
FETCH_BATCH = 64


def tile_key(domain: str, tile_id: str, inputs_hash: str) -> str:
    return f"{domain}/{tile_id}-{inputs_hash[:KEY_HASH_CHARS]}.png"


def manifest_row(tile_id: str, tile: Tile, domain: str, city: str, inputs_hash: str, sources: list[dict],
                 points_lonlat: list[list[float]] | None, marker_radius_px: float, coverage: dict) -> dict:
    """A tile's row; `coverage` holds data_share, map_features, data_extent_lonlat and, for an area
    tile with an overlap, core_inset_px (see the module's docstring)."""
    row = {
        "id": tile_id,
        "path": tile_key(domain, tile_id, inputs_hash),
        "domain": domain,
        "city": city,
        "size_px": tile.size_px,
        "m_per_px": tile.m_per_px,
        "mpp_3857": tile.mpp_3857,
        "crs": "EPSG:3857",
        "bounds_3857": list(tile.bounds_3857),
        "bounds_lonlat": list(tile.bounds_lonlat),
        "style_version": STYLE_VERSION,
        "locgen_version": __version__,
        "style_sha256": style_sha256(),
        "sources": sources,
        "inputs_sha256": inputs_hash,
        "attribution": OSM_ATTRIBUTION,
        **coverage,
    }
    if points_lonlat is not None:  # domains a and holdout: where the points are, and how large markers are drawn
        row["points"] = points_lonlat
        row["marker_radius_px"] = marker_radius_px
    return row


def png_text(row: dict) -> dict[str, str]:
    """The text chunks of a tile's PNG: its georeference and the attribution."""
    georef = {key: row[key] for key in ("id", "domain", "city", "crs", "size_px", "m_per_px", "mpp_3857",
                                        "bounds_3857", "bounds_lonlat", "style_version", "style_sha256",
                                        "inputs_sha256")}
    return {GEOREF_TEXT_KEY: json.dumps(georef), "Copyright": OSM_ATTRIBUTION, "Source": "locgen"}


def in_data_extent(row: dict, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Whether lon/lat points lie inside the data extent a tile's row records (everywhere, for a
    row from before extents were recorded)."""
    boxes = row.get("data_extent_lonlat")
    lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    if boxes is None:
        return np.ones(lon.shape, dtype=bool)
    inside = np.zeros(lon.shape, dtype=bool)
    for box in boxes:
        inside |= contains(LonLatBounds(*box), lon, lat)
    return inside


def in_core(row: dict, col: np.ndarray, row_px: np.ndarray) -> np.ndarray:
    """Whether pixel positions of a tile lie in the core it owns: at least `core_inset_px` inside
    its edges (the whole tile when it records none)."""
    inset_px = row.get("core_inset_px", 0.0)
    size_px = row["size_px"]
    col, row_px = np.asarray(col), np.asarray(row_px)
    return (col >= inset_px) & (col < size_px - inset_px) & (row_px >= inset_px) & (row_px < size_px - inset_px)


def owned_detections(row: dict, tile: Tile, detections: list[Detection]) -> list[Detection]:
    """The detections a tile owns: in its core (not its border band, which a neighbour's core covers)
    and inside the OSM data's extent (nothing is known beyond it)."""
    if not detections:
        return detections
    col = np.array([d.col for d in detections])
    row_px = np.array([d.row for d in detections])
    lon, lat = tile.px_to_lonlat(col, row_px)
    keep = in_core(row, col, row_px) & in_data_extent(row, lon, lat)
    return [d for d, kept in zip(detections, keep) if kept]


def tile_of_row(row: dict) -> Tile:
    """The exact tile geometry of a manifest row or PNG georeference."""
    return tile_from_bounds_3857(Bounds3857(*row["bounds_3857"]), row["size_px"])


def read_manifest(store: Store) -> list[dict]:
    return parse_manifest(store.get_bytes(MANIFEST_KEY), store.url(MANIFEST_KEY))


def tileset_plan(store: Store, stage: str, identity: dict, overwrite: bool) -> dict:
    """The plan of a `stage` run with `identity` (JSON values: what names its output), once it is known that it
    may write to `store`: where it holds no tile set or this plan's; another plan's (or a tile set with no plan)
    only with `overwrite`. Nothing is written yet: `claim` writes it before the first tile."""
    plan = json.loads(json.dumps({"stage": stage, "identity": identity}))
    held = _held_plan(store)
    if held == plan or overwrite or (held is None and not store.exists(MANIFEST_KEY)):
        return plan
    if held is None:
        differs = "one with no plan recorded"
    elif held["stage"] != stage:
        differs = f"written by {held['stage']}"
    else:
        names = set(plan["identity"]) | set(held["identity"])
        differs = f"{stage} of other " + ", ".join(
            sorted(name for name in names if plan["identity"].get(name) != held["identity"].get(name)))
    raise LocgenError(f"--out {store.uri}: holds another tile set ({differs}); give another --out, or --overwrite "
                      "to replace it (the tiles they share are reused)")


def claim(store: Store, plan: dict) -> None:
    """Write `plan` (of `tileset_plan`) to `store` unless it is there already."""
    if _held_plan(store) != plan:
        store.publish_bytes(PLAN_KEY, json.dumps(plan, indent=1).encode(), "application/json")


def check_claim(store: Store, plan: dict) -> None:
    """`store` still holds `plan`, just before its manifest is published; else another run took it over."""
    if _held_plan(store) != plan:
        raise LocgenError(f"--out {store.uri}: another run of another plan took it over while this one ran; its "
                          "tile set stands and this run published nothing: run again with another --out")


def _held_plan(store: Store) -> dict | None:
    if not store.exists(PLAN_KEY):
        return None
    plan = json_object(store.get_bytes(PLAN_KEY))
    if not (plan is not None and isinstance(plan.get("stage"), str) and isinstance(plan.get("identity"), dict)):
        raise LocgenError(f"{store.url(PLAN_KEY)}: is not a tile set's plan; give another --out, or remove the file")
    return plan


def manifest_key(shard: int, shards: int) -> str:
    """Where a run publishes its rows: the manifest, or for one of several shards its part of it."""
    if shards < 1 or not 0 <= shard < shards:
        raise LocgenError(f"shard {shard} of {shards}: give shards >= 1 and a shard from 0 to shards - 1")
    return MANIFEST_KEY if shards == 1 else f"{MANIFEST_PARTS}/{shard:04d}-of-{shards:04d}.jsonl"


def merge_manifest_parts(store: Store, shards: int) -> list[dict]:
    """Publish the manifest of a tile set that `shards` shards made, each taking every shards-th tile
    of the plan from its own index on: the rows back in plan order, as one run would have written them
    (a planned tile's rows, the a/b twins that share its id, stay together)."""
    parts = [_by_planned_tile(parse_manifest(_part(store, shard, shards), store.url(manifest_key(shard, shards))))
             for shard in range(shards)]
    rows = [row for index in range(max(map(len, parts), default=0)) for part in parts if index < len(part)
            for row in part[index]]
    store.publish_bytes(MANIFEST_KEY, manifest_bytes(rows), "application/jsonl")
    return rows


def _by_planned_tile(rows: list[dict]) -> list[list[dict]]:
    """Consecutive rows of one id (a planned tile's domains) as one group."""
    groups: list[list[dict]] = []
    for row in rows:
        if groups and groups[-1][0]["id"] == row["id"]:
            groups[-1].append(row)
        else:
            groups.append([row])
    return groups


def _part(store: Store, shard: int, shards: int) -> bytes:
    key = manifest_key(shard, shards)
    if not store.exists(key):
        raise LocgenError(f"{store.url(key)}: shard {shard} of {shards} has not published its part; run it (again) "
                          "before collecting")
    return store.get_bytes(key)


def plain_rows(store: Store, option: str) -> list[dict]:
    """The rows of the plain (domain b) tiles of a tile set that hold map data: what a generator
    translates (a tile wholly outside the data's extent is bare land, which no generator has seen).

    `option` names the command-line option that gave the tile set, for the error messages.
    """
    if not store.exists(MANIFEST_KEY):
        raise LocgenError(f"{option} {store.uri}: no {MANIFEST_KEY}; give a tile set that locgen render wrote")
    plain = [row for row in read_manifest(store) if row["domain"] == "b"]
    if not plain:
        raise LocgenError(f"{option} {store.uri}: no plain (domain b) tiles; render the area with locgen render "
                          "--bbox or --center/--grid")
    rows = [row for row in plain if row.get("data_share", 1.0) > 0]
    if not rows:
        raise LocgenError(f"{option} {store.uri}: every plain tile lies outside the OSM data's extent; render an "
                          "area the OSM data covers")
    return rows


def json_object(text: str | bytes) -> dict | None:
    """`text` read as JSON, when it is an object; None for anything else (not JSON, nested past reading, a list)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def parse_manifest(raw: bytes, where: str) -> list[dict]:
    """The rows of a manifest, each checked (`check_row`); one line naming `where` and the line otherwise."""
    rows = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        row = json_object(line)
        if row is None:
            raise LocgenError(f"{where} line {number}: not a JSON object; {MANIFEST_FIX}")
        rows.append(check_row(row, f"{where} line {number}"))
    return rows


MANIFEST_FIX = "render (or generate) the tile set again: its manifest was changed or cut short"
# A row's geometry agrees with itself to this share (what JSON's 17 digits and one division lose, many times over).
ROW_TOLERANCE = 1e-9


def check_row(row: dict, what: str) -> dict:
    """The row of a tile (a manifest's, or a PNG's own georeference), if every reader may trust its geometry:
    a path and a domain, a side within the tile sizes, square bounds inside the Web Mercator world whose scale
    is its mpp_3857, and m_per_px that scale at the tile's centre; else one line naming `what`."""
    problem = _row_problem(row)
    if problem:
        raise LocgenError(f"{what}: {problem}; {MANIFEST_FIX}")
    return row


def _row_problem(row: dict) -> str | None:
    if not (isinstance(row.get("path"), str) and row["path"] and isinstance(row.get("domain"), str)):
        return "no path or domain"
    size_px = row.get("size_px")
    if isinstance(size_px, bool) or not isinstance(size_px, int) or not MIN_TILE_PX <= size_px <= MAX_TILE_PX:
        return f"size_px {size_px!r} is not a whole number from {MIN_TILE_PX} to {MAX_TILE_PX}"
    bounds = row.get("bounds_3857")
    if not (isinstance(bounds, list) and len(bounds) == 4 and all(_is_number(value) for value in bounds)):
        return f"bounds_3857 {bounds!r} are not four numbers"
    try:
        check_bounds_3857(Bounds3857(*bounds), "bounds_3857", "")
    except LocgenError as error:
        return str(error).removesuffix("; ")
    west, south, east, north = bounds
    side = east - west
    if not math.isclose(north - south, side, rel_tol=ROW_TOLERANCE):
        return f"bounds_3857 {west:g},{south:g},{east:g},{north:g} are not a square tile"
    for name, expected in (("mpp_3857", side / size_px),
                           ("m_per_px", side / size_px / mercator_scale(_centre_lat(south, north)))):
        if name in row and not (_is_number(row[name]) and math.isclose(row[name], expected, rel_tol=ROW_TOLERANCE)):
            return f"{name} {row[name]!r} disagrees with its bounds ({expected:.6g})"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _centre_lat(south_3857: float, north_3857: float) -> float:
    return float(lonlat_from_3857(0.0, (south_3857 + north_3857) / 2)[1])


def manifest_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def fetch_all(store: Store, keys: list[str]) -> Iterator[bytes]:
    """The bytes of each key, in order, read a batch ahead by a few threads (hides an object store's
    round trips while the caller works on the tiles already read)."""
    with ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch") as pool:
        for start in range(0, len(keys), FETCH_BATCH):
            yield from pool.map(store.get_bytes, keys[start:start + FETCH_BATCH])


def read_georef(png: bytes) -> dict | None:
    """The georeference a tile carries (its `locgen:georef` PNG text chunk), None without one; ValueError for a
    file that is no PNG or a chunk that is not a JSON object."""
    text = read_png_text(png).get(GEOREF_TEXT_KEY)
    if text is None:
        return None
    georef = json_object(text)
    if georef is None:
        raise ValueError(f"its '{GEOREF_TEXT_KEY}' PNG text chunk is not a JSON object")
    return georef


def decode_tile(png: bytes, uri: str, row: dict) -> np.ndarray:
    """A tile's RGB pixels, of the size its (checked) manifest row says; a corrupt file, one of another size or
    one whose own georeference places it elsewhere is one clear error naming it."""
    try:
        rgb = decode_png(png, row["size_px"])
        georef = read_georef(png)
        if georef is not None and georef.get("bounds_3857") != row["bounds_3857"]:
            raise ValueError("its own georeference places it elsewhere than its manifest row")
    except (ValueError, RecursionError) as error:
        raise LocgenError(f"{uri}: not a readable tile ({one_line(error, 200)}); render or generate it "
                          "again") from None
    return rgb
