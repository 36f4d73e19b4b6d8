"""Tile plans: which tiles to render.

- A target area: the tiles that cover a bbox, or an N x N grid around a centre. All tiles of an
  area share one EPSG:3857 scale (the ground resolution at the area's centre), so neighbours
  abut, or overlap by exactly `overlap_px`, pixel for pixel.
- Training pairs: tiles placed around the locations (jittered, so a location is not always in the
  middle) plus a share of tiles with no location, none touching the held-out region. Each tile
  has its own scale (ground resolution exact at its centre), and is drawn twice: with markers
  (domain a) and without (domain b).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from components.core.errors import LocgenError
from components.core.geo import (
    Bounds,
    Tile,
    bounds_lonlat_to_m,
    contains,
    intersects,
    m_to_lonlat,
    mercator_scale,
    tile_at,
)

MAX_TRIES_PER_TILE = 1000


class PlannedTile(NamedTuple):
    tile_id: str
    tile: Tile


def _area_tile(tile_id: str, centre_x_m: float, centre_y_m: float, size_px: int, mpp_3857: float) -> PlannedTile:
    return PlannedTile(tile_id, Tile(centre_x_m, centre_y_m, size_px, mpp_3857))


def _area_scale(lat: float, m_per_px: float) -> float:
    return m_per_px * mercator_scale(lat)


def _check_step(size_px: int, overlap_px: int) -> int:
    if not 0 <= overlap_px < size_px:
        raise LocgenError(f"--overlap-px {overlap_px}: must be at least 0 and less than the tile size {size_px}")
    return size_px - overlap_px


def grid_plan(centre_lonlat: tuple[float, float], grid: int, size_px: int = 256, m_per_px: float = 2.0,
              overlap_px: int = 0) -> list[PlannedTile]:
    """An N x N grid of tiles centred on lon/lat; ids r{row}c{col}, row 0 to the north."""
    if grid < 1:
        raise LocgenError(f"--grid {grid}: give at least 1 (tiles per side)")
    step_px = _check_step(size_px, overlap_px)
    centre = tile_at(*centre_lonlat, size_px=size_px, m_per_px=m_per_px)
    step_m = step_px * centre.mpp_3857
    half = (grid - 1) / 2
    return [_area_tile(f"r{row:03d}c{col:03d}", centre.centre_x_m + (col - half) * step_m,
                       centre.centre_y_m - (row - half) * step_m, size_px, centre.mpp_3857)
            for row in range(grid) for col in range(grid)]


def bbox_plan(bbox_lonlat: Bounds, size_px: int = 256, m_per_px: float = 2.0, overlap_px: int = 0) -> list[PlannedTile]:
    """The fewest tiles, centred on the bbox, whose union covers it."""
    step_px = _check_step(size_px, overlap_px)
    bbox_m = bounds_lonlat_to_m(bbox_lonlat)
    _, centre_lat = m_to_lonlat((bbox_m.west + bbox_m.east) / 2, (bbox_m.south + bbox_m.north) / 2)
    mpp_3857 = _area_scale(centre_lat, m_per_px)
    step_m = step_px * mpp_3857
    overlap_m = overlap_px * mpp_3857
    cols = max(1, math.ceil((bbox_m.east - bbox_m.west - overlap_m) / step_m))
    rows = max(1, math.ceil((bbox_m.north - bbox_m.south - overlap_m) / step_m))
    centre_x_m, centre_y_m = (bbox_m.west + bbox_m.east) / 2, (bbox_m.south + bbox_m.north) / 2
    return [_area_tile(f"r{row:03d}c{col:03d}", centre_x_m + (col - (cols - 1) / 2) * step_m,
                       centre_y_m - (row - (rows - 1) / 2) * step_m, size_px, mpp_3857)
            for row in range(rows) for col in range(cols)]


class PairSettings(NamedTuple):
    pairs: int
    empty_share: float = 0.1  # share of tiles placed where there is no location
    jitter: float = 0.8  # how far from the tile centre a location may fall, as a share of half a tile
    seed: int = 0
    size_px: int = 256
    m_per_px: float = 2.0


def pairs_plan(points_m: np.ndarray, weights: np.ndarray, area_m: Bounds, settings: PairSettings,
               holdout_m: Bounds | None = None) -> list[PlannedTile]:
    """Training tiles: around weighted locations (EPSG:3857 metres) and on empty ground, ids p00000..."""
    if settings.pairs < 1:
        raise LocgenError(f"--pairs {settings.pairs}: give at least 1")
    if not 0 <= settings.empty_share <= 1:
        raise LocgenError(f"--empty-share {settings.empty_share}: give a share between 0 and 1")
    rng = np.random.default_rng(settings.seed)
    empty_count = round(settings.pairs * settings.empty_share)
    located = _located_tiles(points_m, weights, settings, holdout_m, rng, settings.pairs - empty_count)
    empty = _empty_tiles(points_m, area_m, settings, holdout_m, rng, empty_count)
    return [PlannedTile(f"p{index:05d}", tile) for index, tile in enumerate(located + empty)]


def _outside_holdout(tile: Tile, holdout_m: Bounds | None) -> bool:
    return holdout_m is None or not intersects(tile.bounds_3857, holdout_m)


def _tile_at_m(x_m: float, y_m: float, settings: PairSettings) -> Tile:
    lon, lat = m_to_lonlat(x_m, y_m)
    return tile_at(lon, lat, settings.size_px, settings.m_per_px)


def _located_tiles(points_m, weights, settings, holdout_m, rng, count) -> list[Tile]:
    usable = weights > 0
    if count and not usable.any():
        raise LocgenError("no locations with a positive weight in the area; give --locations inside the OSM data")
    probability = np.where(usable, weights, 0) / weights[usable].sum() if usable.any() else None
    tiles = []
    while len(tiles) < count:
        for _ in range(MAX_TRIES_PER_TILE):
            x_m, y_m = points_m[rng.choice(len(points_m), p=probability)]
            half_m = settings.size_px * settings.m_per_px * mercator_scale(m_to_lonlat(x_m, y_m)[1]) / 2
            dx_m, dy_m = rng.uniform(-1, 1, size=2) * settings.jitter * half_m
            tile = _tile_at_m(x_m + dx_m, y_m + dy_m, settings)
            if _outside_holdout(tile, holdout_m):
                tiles.append(tile)
                break
        else:
            raise LocgenError("every location lies in the held-out region (--holdout); shrink it or add locations")
    return tiles


def _empty_tiles(points_m, area_m, settings, holdout_m, rng, count) -> list[Tile]:
    tiles = []
    while len(tiles) < count:
        for _ in range(MAX_TRIES_PER_TILE):
            tile = _tile_at_m(rng.uniform(area_m.west, area_m.east), rng.uniform(area_m.south, area_m.north),
                              settings)
            bounds = tile.bounds_3857
            if _outside_holdout(tile, holdout_m) and not contains(bounds, points_m[:, 0], points_m[:, 1]).any():
                tiles.append(tile)
                break
        else:
            raise LocgenError(f"found no location-free place for {count} empty tiles in the area; "
                              "lower --empty-share or give a larger --bbox")
    return tiles
