"""The render stage as one call: sources -> tile plan -> rendered PNGs -> published tile set.

Tiles go to the store first, each under a key that carries the hash of its inputs; the manifest is
published last, atomically. A run that stops half-way leaves no manifest pointing at missing tiles,
and the next run renders only what is not there yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components import __version__
from components.core.cpus import usable_cpus
from components.core.errors import LocgenError
from components.core.geo import (
    Bounds3857,
    LonLatBounds,
    Tile,
    bbox_text,
    bounds_to_3857,
    bounds_to_lonlat,
    check_bbox,
    contains,
    expand,
    lonlat_to_3857,
    mercator_scale,
    parse_bbox,
    parse_latlon,
)
from components.core.pngmeta import encode_png
from components.core.progress import Progress
from components.core.settings import SEED, Checked, Within, output_identity, setting
from components.core.storage import Store, default_cache_dir, local_file, open_store
from components.core.style import style_sha256
from components.core.tileset import (
    MAX_TILE_PX,
    MIN_TILE_PX,
    check_claim,
    claim,
    manifest_bytes,
    manifest_key,
    manifest_row,
    png_text,
    tile_key,
    tileset_plan,
)
from components.render.plan import (
    SAMPLINGS,
    PairSettings,
    PlannedTile,
    bbox_plan,
    grid_plan,
    holdout_plan,
    pairs_plan,
)
from components.render.raster import draw_markers, render_map
from components.sources.locations import (
    LocationSource,
    feed_deadline_s_setting,
    feed_limits,
    feed_max_mb_setting,
    load_locations,
)
from components.sources.osm import MapData, header_bounds, read_osm, touching
from components.sources.overpass import DEFAULT_OVERPASS_URL, OVERPASS_LIMITS, fetch_overpass

OVERPASS = "overpass"
# Map data kept around the tiles, so features that only cross an edge are drawn: EPSG:3857 metres,
# 100 ground metres at 60 degrees north.
OSM_MARGIN_3857 = 200.0
CHUNK_TILES = 16  # tiles a worker renders before it waits for their uploads
SIMPLIFY_PX = 0.25  # map lines lose the vertices that move them by less than this: invisible, and faster
UPLOAD_THREADS = 8  # concurrent uploads per process: enough to hide an object store's round trips
COVERAGE_SAMPLES = 64  # per side: a tile's data share to 1/4096
MAX_M_PER_PX = 1000.0  # 1 km a pixel: a 256 px tile is a region; coarser, the map is no longer a street map
MAX_MARKER_RADIUS_PX = 64.0  # a disc wider than a default tile's overlap (64 px) would not be a marker


@dataclass
class RenderSettings(Checked):
    """Everything `locgen render` takes, with its defaults and help, in one place (components.core.settings)."""

    osm: list[str] = setting(help="OSM data: .osm.pbf/.osm/.osm.bz2 path, s3:// URI, or 'overpass' (repeatable)",
                             metavar="SRC")
    out: str = setting(help="tile set: local path or s3://bucket/prefix", metavar="URI", output=False)
    bbox: LonLatBounds | None = setting(None, help="cover this area (degrees)", parse=parse_bbox, metavar="W,S,E,N",
                                  group="area")
    center: tuple[float, float] | None = setting(None, help="centre of an N x N grid", parse=parse_latlon,
                                                 metavar="LAT,LON", group="area")  # lon, lat
    grid: int | None = setting(None, help="tiles per side around --center (15: the original's grid)", metavar="N",
                               within=Within(1))
    pairs: int | None = setting(None, help="training pairs placed around the locations", metavar="N",
                                within=Within(1))
    locations: list[str] = setting(
        help="GBFS gbfs.json/feed (file or URL), CSV, GeoJSON, or osm:KEY=VALUE (repeatable)", metavar="SRC",
        default_factory=list)
    city: str | None = setting(None, help="city name recorded with every tile (default: the OSM file's name)")
    size_px: int = setting(256, help="tile size in pixels (%(default)s)", within=Within(MIN_TILE_PX, MAX_TILE_PX))
    m_per_px: float = setting(2.0, help="ground metres per pixel at the tile centre (%(default)s)",
                             within=Within(0, MAX_M_PER_PX, above=True))
    # 64: the bundled generator paints 18-37 % fewer dots within 32 px of a tile's edge than deeper in
    # (benchmarks/bench_seams.py); each tile owns the points of its core, half the overlap inside its edges.
    overlap_px: int = setting(64, help="overlap of neighbouring area tiles in pixels; each tile keeps the points "
                                       "at least half of it inside its edges (%(default)s; 0: abutting tiles)",
                             within=Within(0))
    marker_radius_px: float = setting(3.0, help="marker disc radius in pixels (%(default)s)",
                                     within=Within(0, MAX_MARKER_RADIUS_PX, above=True))
    empty_share: float = setting(0.1, help="share of pairs with no location, with --sampling points (%(default)s)",
                                within=Within(0, 1))
    sampling: str = setting("points", choices=SAMPLINGS,
                            help="how training pairs are placed: around the locations (points), or covering the "
                                 "training area as it is, empty places as often as they occur (area) (%(default)s)")
    holdout: LonLatBounds | None = setting(None, help="held-out region: no training pair touches it; its plain tiles "
                                                      "and real points come along, to validate on",
                                     parse=parse_bbox, metavar="W,S,E,N")
    seed: int = setting(0, help="random seed of the pair placement", within=SEED)
    workers: int = setting(1, help="processes, 0: every CPU this process may use (its CPU limit in a pod) "
                                   "(%(default)s)", output=False, within=Within(0))
    drop_disabled: bool = setting(True, help="keep GBFS vehicles marked is_disabled", flag="--keep-disabled",
                                  action="store_false")
    drop_reserved: bool = setting(False, help="drop GBFS vehicles marked is_reserved")
    overpass_url: str = setting(DEFAULT_OVERPASS_URL,
                                help="Overpass API interpreter for --osm overpass (%(default)s)")
    overpass_max_mb: float = setting(OVERPASS_LIMITS.max_mb, help="the most megabytes the Overpass answer may "
                                     "take (%(default)s)", metavar="MB", within=Within(0, above=True), output=False)
    overpass_deadline_s: float = setting(OVERPASS_LIMITS.deadline_s, help="seconds the Overpass answer may take "
                                         "in all (%(default)s)", metavar="SECONDS", within=Within(0, above=True),
                                         output=False)
    feed_max_mb: float = feed_max_mb_setting()
    feed_deadline_s: float = feed_deadline_s_setting()
    overwrite: bool = setting(False, help="replace the tile set of another plan in --out (the tiles they share are "
                                          "reused)", output=False)
    cache_dir: Path = setting(help="download cache (default $LOCGEN_CACHE or ~/.cache/locgen)",
                              default_factory=default_cache_dir, output=False)
    progress: bool = setting(True, help="a progress bar on stderr", cli=False, output=False)
    # with shards > 1: render every shards-th planned tile from this one on, and publish a part
    shard: int = setting(0, help="this shard's index", cli=False, output=False, within=Within(0))
    shards: int = setting(1, help="how many shards render the tile set", cli=False, output=False,
                         within=Within(1))


@dataclass
class _Job:
    """What every worker needs to render and store its tiles (inherited by forked workers)."""

    map_data: MapData
    extent_lonlat: list[LonLatBounds]  # where the OSM data has anything to say
    extent_3857: list[Bounds3857]  # the same boxes in EPSG:3857
    store: Store
    city: str
    osm_sources: list[dict]
    location_sources: list[dict]
    points_lonlat: np.ndarray  # (N, 2) locations with a positive weight
    points_3857: np.ndarray  # (N, 2) the same in EPSG:3857 metres
    marker_radius_px: float
    existing_keys: set[str]
    holdout_lonlat: LonLatBounds | None  # the held-out box, whose tiles carry its real points


log = logging.getLogger(__name__)
_JOB: _Job | None = None


def render(settings: RenderSettings) -> dict:
    """Render and publish a tile set; returns a summary (tile counts, the manifest's URI)."""
    _check_mode(settings)
    published = manifest_key(settings.shard, settings.shards)
    store = open_store(settings.out)
    tileset = tileset_plan(store, "render", output_identity(settings), settings.overwrite)
    osm_files = _osm_files(settings)
    sources = [load_locations(spec, osm_files=osm_files, drop_disabled=settings.drop_disabled,
                              drop_reserved=settings.drop_reserved, limits=feed_limits(settings))
               for spec in settings.locations]
    points_lonlat, weights = _positions(sources)
    plan = _plan(settings, osm_files, points_lonlat, weights)[settings.shard::settings.shards]
    if not plan:  # more shards than tiles
        claim(store, tileset)
        store.publish_bytes(published, b"", "application/jsonl")
        return {"tileset": store.uri, "manifest": store.url(published), "city": settings.city, "tiles": 0,
                "rendered": 0, "skipped": 0, "domains": [], "render_s": 0.0, "data_share": 1.0}
    map_data, extent_lonlat = _read_map(settings, osm_files, _plan_bounds_lonlat(plan))
    extent_3857 = [bounds_to_3857(box) for box in extent_lonlat]
    drawn = weights > 0  # a station with no bike available has nothing standing there
    job = _Job(map_data, extent_lonlat, extent_3857, store, settings.city or _default_city(settings),
               [source._asdict() for source in map_data.sources],
               [{"uri": s.uri, "kind": s.kind, "sha256": s.sha256} for s in sources],
               points_lonlat[drawn], _to_3857(points_lonlat[drawn]), settings.marker_radius_px, store.list_keys(),
               settings.holdout if settings.pairs is not None else None)
    claim(store, tileset)
    started_s = time.perf_counter()
    rows, rendered = _render_all(job, plan, settings.workers, settings.progress)
    render_s = time.perf_counter() - started_s
    covered = _area_share(settings, plan, extent_3857) if settings.pairs is None else 1.0
    if covered < 1.0:
        log.warning("only %.0f %% of the area lies inside the OSM data's extent (%s); nothing is generated or "
                    "extracted outside it: give OSM data that covers the area, or a smaller area", 100 * covered,
                    "; ".join(",".join(f"{v:.5f}" for v in box) for box in rows[0]["data_extent_lonlat"]))
    check_claim(store, tileset)
    store.publish_bytes(published, manifest_bytes(rows), "application/jsonl")
    return {"tileset": store.uri, "manifest": store.url(published), "city": job.city, "tiles": len(rows),
            "rendered": rendered, "skipped": len(rows) - rendered,
            "domains": sorted({row["domain"] for row in rows}), "render_s": round(render_s, 3),
            "data_share": round(covered, 4)}


def _area_share(settings: RenderSettings, plan: list[PlannedTile], extent_3857: list[Bounds3857]) -> float:
    """The share of the area asked for (the bbox, or the cores of a grid's tiles) inside the data extent."""
    if settings.bbox is not None:
        return _share_inside(bounds_to_3857(settings.bbox), extent_3857)
    cores = [expand(planned.tile.bounds_3857, -planned.core_inset_px * planned.tile.mpp_3857) for planned in plan]
    return float(np.mean([_share_inside(core, extent_3857) for core in cores]))


def _check_mode(settings: RenderSettings) -> None:
    if not settings.osm:
        raise LocgenError("no OSM data: give --osm FILE.osm.pbf (or --osm overpass)")
    if settings.pairs is None and settings.bbox is None and settings.center is None:
        raise LocgenError("no area: give --bbox WEST,SOUTH,EAST,NORTH, or --center LAT,LON --grid N, or --pairs N")
    if (settings.center is None) != (settings.grid is None):
        raise LocgenError("--center LAT,LON and --grid N go together: N x N tiles around the centre")
    if settings.pairs is not None and settings.center is not None:
        raise LocgenError("--pairs places tiles around the locations: give it --bbox (or no area), not --center")
    if settings.pairs is not None and not settings.locations:
        raise LocgenError("--pairs needs --locations SRC: training tiles are placed around the locations")
    if settings.bbox is not None and settings.center is not None:
        raise LocgenError("give either --bbox or --center, not both")


def _osm_files(settings: RenderSettings) -> list[Path]:
    """Local files of the --osm sources other than Overpass (whose area is known only once planned).

    s3:// objects are downloaded to the cache, under a folder named by the hash of their URI.
    """
    files = []
    for spec in settings.osm:
        if spec.startswith("s3://"):
            files.append(local_file(spec, settings.cache_dir / "osm"))
        elif spec != OVERPASS:
            if not Path(spec).is_file():
                raise LocgenError(f"--osm {spec}: no such file; give an .osm.pbf/.osm/.osm.bz2 file, "
                                  "an s3:// URI or 'overpass'")
            files.append(Path(spec))
    return files


def _read_map(settings: RenderSettings, osm_files: list[Path],
              area: LonLatBounds) -> tuple[MapData, list[LonLatBounds]]:
    """The map of the planned area, from the OSM files and, when asked, Overpass (fetched now that
    the area is known), and the extent of that data."""
    osm_uris = [spec for spec in settings.osm if spec != OVERPASS]
    extents = [header_bounds(path) for path in osm_files]
    if OVERPASS in settings.osm:
        overpass_bbox = check_bbox(bounds_to_lonlat(expand(bounds_to_3857(area), OSM_MARGIN_3857)))
        limits = OVERPASS_LIMITS._replace(max_mb=settings.overpass_max_mb, deadline_s=settings.overpass_deadline_s)
        osm_files = osm_files + [fetch_overpass(overpass_bbox, url=settings.overpass_url,
                                                cache_dir=settings.cache_dir / "overpass", limits=limits)]
        osm_uris.append(f"{settings.overpass_url}?bbox={','.join(f'{v:.7f}' for v in overpass_bbox)}")
        extents.append(overpass_bbox)
    # The scale at the whole degree of latitude: the same tolerance (and so the same pixels) for any
    # plan in a city, so a re-run with more training pairs reuses the tiles it shares with the last.
    simplify_3857 = SIMPLIFY_PX * settings.m_per_px * mercator_scale(round((area.south + area.north) / 2))
    map_data = read_osm(osm_files, area, OSM_MARGIN_3857, osm_uris, simplify_3857)
    return map_data, _extent(extents, map_data)


def _extent(stated: list[LonLatBounds | None], map_data: MapData) -> list[LonLatBounds]:
    """Where the data has anything to say: each source's stated extent; where one states none, the
    extent of the features read (a file without a header box)."""
    boxes = [box for box in stated if box is not None]
    if None in stated:
        features = map_data.features.bbox_3857
        boxes.append(bounds_to_lonlat(Bounds3857(features[:, 0].min(), features[:, 1].min(), features[:, 2].max(),
                                                 features[:, 3].max())))
    return boxes


def _positions(sources: list[LocationSource]) -> tuple[np.ndarray, np.ndarray]:
    points = [point for source in sources for point in source.points]
    lonlat = np.array([[p.lon, p.lat] for p in points], dtype=np.float64).reshape(-1, 2)
    return lonlat, np.array([p.weight for p in points], dtype=np.float64)


def _to_3857(points_lonlat: np.ndarray) -> np.ndarray:
    return np.stack(lonlat_to_3857(points_lonlat[:, 0], points_lonlat[:, 1]), axis=1).reshape(-1, 2)


def _plan(settings: RenderSettings, osm_files: list[Path], points_lonlat: np.ndarray,
          weights: np.ndarray) -> list[PlannedTile]:
    if settings.pairs is None:
        if settings.bbox is not None:
            return bbox_plan(settings.bbox, settings.size_px, settings.m_per_px, settings.overlap_px)
        return grid_plan(settings.center, settings.grid, settings.size_px, settings.m_per_px, settings.overlap_px)
    area = settings.bbox or _osm_extent(osm_files, settings)
    points_3857 = _to_3857(points_lonlat)
    area_3857 = bounds_to_3857(area)
    inside = contains(area_3857, points_3857[:, 0], points_3857[:, 1])
    if not inside.any():
        raise LocgenError(f"none of the {len(points_3857)} locations lies in the area {tuple(area)}; "
                          "give --locations for the city of the OSM data, or a --bbox around them")
    holdout_3857 = bounds_to_3857(settings.holdout) if settings.holdout else None
    if holdout_3857 is not None and not (contains(holdout_3857, points_3857[:, 0], points_3857[:, 1])
                                         & (weights > 0)).any():
        raise LocgenError(f"--holdout {bbox_text(settings.holdout)}: no location lies inside it, so nothing could be "
                          "validated there; give a held-out box around some of the --locations, or none")
    pair_settings = PairSettings(settings.pairs, settings.empty_share, seed=settings.seed, sampling=settings.sampling,
                                 size_px=settings.size_px, m_per_px=settings.m_per_px)
    pairs = pairs_plan(points_3857[inside], weights[inside], area_3857, pair_settings, holdout_3857)
    if settings.holdout is None:
        return pairs
    return pairs + holdout_plan(settings.holdout, settings.size_px, settings.m_per_px, settings.overlap_px)


def _osm_extent(osm_files: list[Path], settings: RenderSettings) -> LonLatBounds:
    """The area the OSM files say they cover (their header bbox), for placing training pairs."""
    boxes = [header_bounds(path) for path in osm_files]
    if not boxes or None in boxes or len(boxes) != len(settings.osm):
        raise LocgenError("--pairs: the OSM data states no extent; give the training area with --bbox W,S,E,N")
    return check_bbox(LonLatBounds(min(b.west for b in boxes), min(b.south for b in boxes),
                             max(b.east for b in boxes), max(b.north for b in boxes)), "OSM data extent")


def _plan_bounds_lonlat(plan: list[PlannedTile]) -> LonLatBounds:
    bounds = np.array([planned.tile.bounds_3857 for planned in plan])
    return bounds_to_lonlat(Bounds3857(bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max()))


def _default_city(settings: RenderSettings) -> str:
    first = settings.osm[0]
    return "overpass-area" if first == OVERPASS else Path(first).name.split(".")[0]


def _render_all(job: _Job, plan: list[PlannedTile], workers: int, progress: bool) -> tuple[list[dict], int]:
    """Render every planned tile (in parallel when asked); manifest rows in plan order."""
    global _JOB
    _JOB = job
    workers = workers or usable_cpus()
    chunks = [plan[start:start + CHUNK_TILES] for start in range(0, len(plan), CHUNK_TILES)]
    bar = Progress(f"render {job.city}", len(plan), "tile", enabled=progress)
    pool = None
    if workers == 1:
        results = map(_render_chunk, chunks)
    else:
        # fork: the workers inherit the map data instead of unpickling it.
        pool = multiprocessing.get_context("fork").Pool(workers)
        results = pool.imap(_render_chunk, chunks)
    rows, rendered = [], 0
    try:
        for chunk, (chunk_rows, chunk_rendered) in zip(chunks, results):
            rows.extend(chunk_rows)
            rendered += chunk_rendered
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
        # No thread may outlive a render: a later render's fork would copy it dead into its workers.
        uploads = _UPLOADS.pop(os.getpid(), None)
        if uploads is not None:
            uploads.shutdown()
        _JOB = None
    return rows, rendered


_UPLOADS: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked worker must not use its parent's


def _uploads() -> ThreadPoolExecutor:
    """This process's upload threads: the next tiles render while the last ones travel to the store."""
    pid = os.getpid()
    if pid not in _UPLOADS:
        _UPLOADS[pid] = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="upload")
    return _UPLOADS[pid]


def _render_chunk(chunk: list[PlannedTile]) -> tuple[list[dict], int]:
    """Render a few tiles and store them; returns once every upload of the chunk has landed."""
    rows, uploads = [], []
    for planned in chunk:
        for row, png in _render_tile(planned):
            rows.append(row)
            if png is not None:
                uploads.append(_uploads().submit(_JOB.store.put_bytes, row["path"], png, "image/png"))
    for upload in uploads:
        upload.result()  # raises the first failed upload's error
    return rows, len(uploads)


def _render_tile(planned: PlannedTile) -> list[tuple[dict, bytes | None]]:
    """The manifest rows of the b tile (and the a tile when there are locations), with the PNG of
    each tile that is not in the store yet."""
    job = _JOB
    tile = planned.tile
    bounds = tile.bounds_3857
    inside = contains(bounds, job.points_3857[:, 0], job.points_3857[:, 1])
    radius_3857 = job.marker_radius_px * tile.mpp_3857
    near = contains(expand(bounds, radius_3857), job.points_3857[:, 0], job.points_3857[:, 1])  # discs that spill in
    osm_hashes = [source["sha256"] for source in job.osm_sources]
    variants = [("b", job.osm_sources, None, None)]
    if planned.holdout:  # the real points come along, undrawn: what validation scores against
        variants = [("holdout", job.osm_sources + job.location_sources, None, job.points_lonlat[inside].tolist())]
    elif job.location_sources:
        variants.append(("a", job.osm_sources + job.location_sources, job.points_3857[near],
                         job.points_lonlat[inside].tolist()))
    coverage = _coverage(planned, job)
    results, base = [], None
    for domain, sources, points_3857, points_lonlat in variants:
        inputs_hash = inputs_sha256(tile, domain, osm_hashes, job.map_data.simplify_3857, points_3857,
                                    job.marker_radius_px)
        row = manifest_row(planned.tile_id, tile, domain, job.city, inputs_hash, sources, points_lonlat,
                           job.marker_radius_px, coverage)
        if planned.holdout:
            row["holdout_lonlat"] = list(job.holdout_lonlat)
        if tile_key(domain, planned.tile_id, inputs_hash) in job.existing_keys:
            results.append((row, None))
            continue
        if base is None:
            base = render_map(job.map_data, tile)
        image = base if points_3857 is None else draw_markers(base, tile, points_3857, job.marker_radius_px)
        results.append((row, encode_png(image, png_text(row))))
    return results


def inputs_sha256(tile: Tile, domain: str, source_hashes: list[str], simplify_3857: float,
                  points_3857: np.ndarray | None, marker_radius_px: float) -> str:
    """Hash of everything that decides a tile's pixels."""
    document = {
        "locgen": __version__,  # the renderer's code shapes the pixels as much as the style does
        "tile": list(tile), "domain": domain, "style": style_sha256(), "sources": sorted(source_hashes),
        "simplify_m": simplify_3857,  # the key of a stored hash: the tiles keep their names
        "points_3857": None if points_3857 is None else np.round(points_3857, 4).tolist(),
        "marker_radius_px": marker_radius_px if domain == "a" else None,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _coverage(planned: PlannedTile, job: _Job) -> dict:
    """What a tile's row says of where the map is (components.core.tileset)."""
    tile = planned.tile
    bounds = tile.bounds_3857
    coverage = {"data_share": round(_share_inside(bounds, job.extent_3857), 4),
                "map_features": int(touching(job.map_data.features, bounds).sum()),
                "data_extent_lonlat": [list(box) for box in job.extent_lonlat]}
    if planned.core_inset_px:
        coverage["core_inset_px"] = planned.core_inset_px
    return coverage


def _share_inside(bounds: Bounds3857, extent_3857: list[Bounds3857]) -> float:
    """The share of a box inside the extent boxes, on a grid of COVERAGE_SAMPLES x COVERAGE_SAMPLES points."""
    steps = (np.arange(COVERAGE_SAMPLES) + 0.5) / COVERAGE_SAMPLES
    x_3857, y_3857 = np.meshgrid(bounds.west + steps * (bounds.east - bounds.west),
                                 bounds.south + steps * (bounds.north - bounds.south))
    inside = np.zeros(x_3857.shape, dtype=bool)
    for box in extent_3857:
        inside |= contains(box, x_3857, y_3857)
    return float(inside.mean())
