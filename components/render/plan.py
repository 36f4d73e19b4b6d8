"""Tile plans: which tiles to render.

- A target area: the tiles that cover a bbox, or an N x N grid around a centre. All tiles of an
  area share one EPSG:3857 scale (the ground resolution at the area's centre), so neighbours
  abut, or overlap by exactly `overlap_px`, pixel for pixel. Each area tile owns the points of its
  core: the tile less half the overlap on every side (`core_inset_px`). The cores of a plan tile
  it without gap or overlap and cover the bbox, so every point belongs to exactly one tile, never
  to a tile's border band (where a generator, padding its input, is least reliable), and the
  outer tiles reach half the overlap beyond the area.
- Training pairs, sampled one of two ways, none touching the held-out region:
  - `points`: tiles placed around the locations (jittered, so a location is not always in the
    middle) plus a share of tiles with no location;
  - `area`: tiles that cover the training area as it is, grid after grid at random offsets, each
    grid's cells in random order: empty and sparse places appear as often as they do in the city,
    so the generator learns where there is nothing as well as where there is something.
  Each tile has its own scale (ground resolution exact at its centre), and is drawn twice: with
  markers (domain a, every location inside it) and without (domain b).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from components.core.errors import LocgenError
from components.core.geo import (
    Bounds3857,
    LonLatBounds,
    Tile,
    bounds_to_3857,
    check_bounds_3857,
    contains,
    intersects,
    lonlat_from_3857,
    mercator_scale,
    tile_at,
)

MAX_TRIES_PER_TILE = 1000
# A plan is checked against this before it is made: a whole region (Greater London at the defaults, 2 m/px and
# 256 px tiles overlapping by 64, is ~20,000 tiles) fits many times over; a typo (--grid 100000) does not.
MAX_PLAN_TILES = 1_000_000


class PlannedTile(NamedTuple):
    tile_id: str
    tile: Tile
    core_inset_px: float = 0.0  # the tile owns the points at least this far inside its edges
    holdout: bool = False  # a tile of the held-out box: rendered plain only, for validation


def _area_tile(tile_id: str, centre_x_3857: float, centre_y_3857: float, size_px: int, mpp_3857: float,
               overlap_px: int) -> PlannedTile:
    return PlannedTile(tile_id, Tile(centre_x_3857, centre_y_3857, size_px, mpp_3857), overlap_px / 2)


def _area_scale(lat: float, m_per_px: float) -> float:
    return m_per_px * mercator_scale(lat)


def _check_tile_count(tiles: int, what: str) -> None:
    if tiles > MAX_PLAN_TILES:
        raise LocgenError(f"{what}: {tiles} tiles, more than the {MAX_PLAN_TILES} a plan may hold; give a smaller "
                          "area, or a larger --m-per-px or --size-px")


def _inside_world(plan: list[PlannedTile], what: str) -> list[PlannedTile]:
    """The plan, once its tiles are known to lie inside the Web Mercator world (their corners are lon/lat)."""
    corners = np.array([planned.tile.bounds_3857 for planned in plan])
    union = Bounds3857(corners[:, 0].min(), corners[:, 1].min(), corners[:, 2].max(), corners[:, 3].max())
    check_bounds_3857(union, what, "give a smaller area or --m-per-px, or one farther from the poles and the "
                                   "antimeridian")
    return plan


def _check_step(size_px: int, overlap_px: int) -> int:
    if not 0 <= overlap_px < size_px / 2:
        raise LocgenError(f"--overlap-px {overlap_px}: give at least 0 and less than half the tile size "
                          f"({size_px} px): each tile must keep a core of its own")
    return size_px - overlap_px


def grid_plan(centre_lonlat: tuple[float, float], grid: int, size_px: int = 256, m_per_px: float = 2.0,
              overlap_px: int = 0) -> list[PlannedTile]:
    """An N x N grid of tiles centred on lon/lat; ids r{row}c{col}, row 0 to the north."""
    if grid < 1:
        raise LocgenError(f"--grid {grid}: give at least 1 (tiles per side)")
    _check_tile_count(grid * grid, f"--grid {grid}")
    step_px = _check_step(size_px, overlap_px)
    centre = tile_at(*centre_lonlat, size_px=size_px, m_per_px=m_per_px)
    step_3857 = step_px * centre.mpp_3857
    half = (grid - 1) / 2
    return _inside_world([_area_tile(f"r{row:03d}c{col:03d}", centre.centre_x_3857 + (col - half) * step_3857,
                       centre.centre_y_3857 - (row - half) * step_3857, size_px, centre.mpp_3857, overlap_px)
            for row in range(grid) for col in range(grid)], f"--grid {grid} around the centre")


def bbox_plan(bbox_lonlat: LonLatBounds, size_px: int = 256, m_per_px: float = 2.0,
              overlap_px: int = 0) -> list[PlannedTile]:
    """The fewest tiles, centred on the bbox, whose cores cover it (with no overlap: whose union does)."""
    step_px = _check_step(size_px, overlap_px)
    bbox_3857 = bounds_to_3857(bbox_lonlat)
    _, centre_lat = lonlat_from_3857((bbox_3857.west + bbox_3857.east) / 2, (bbox_3857.south + bbox_3857.north) / 2)
    mpp_3857 = _area_scale(centre_lat, m_per_px)
    step_3857 = step_px * mpp_3857
    cols = max(1, math.ceil((bbox_3857.east - bbox_3857.west) / step_3857))
    rows = max(1, math.ceil((bbox_3857.north - bbox_3857.south) / step_3857))
    _check_tile_count(rows * cols, f"the area {','.join(f'{value:g}' for value in bbox_lonlat)}")
    centre_x_3857, centre_y_3857 = (bbox_3857.west + bbox_3857.east) / 2, (bbox_3857.south + bbox_3857.north) / 2
    return _inside_world([_area_tile(f"r{row:03d}c{col:03d}", centre_x_3857 + (col - (cols - 1) / 2) * step_3857,
                                     centre_y_3857 - (row - (rows - 1) / 2) * step_3857, size_px, mpp_3857,
                                     overlap_px)
                          for row in range(rows) for col in range(cols)],
                         f"the tiles over {','.join(f'{value:g}' for value in bbox_lonlat)}")


SAMPLINGS = ("points", "area")  # how training pairs are placed (the module's docstring)


class PairSettings(NamedTuple):
    pairs: int
    empty_share: float = 0.1  # share of tiles placed where there is no location (sampling "points")
    jitter: float = 0.8  # how far from the tile centre a location may fall, as a share of half a tile
    seed: int = 0
    size_px: int = 256
    m_per_px: float = 2.0
    sampling: str = "points"


def pairs_plan(points_3857: np.ndarray, weights: np.ndarray, area_3857: Bounds3857, settings: PairSettings,
               holdout_3857: Bounds3857 | None = None) -> list[PlannedTile]:
    """Training tiles: around weighted locations (EPSG:3857 metres) and on empty ground, ids p00000..."""
    if settings.pairs < 1:
        raise LocgenError(f"--pairs {settings.pairs}: give at least 1")
    _check_tile_count(settings.pairs, f"--pairs {settings.pairs}")
    if not 0 <= settings.empty_share <= 1:
        raise LocgenError(f"--empty-share {settings.empty_share}: give a share between 0 and 1")
    if settings.sampling not in SAMPLINGS:
        raise LocgenError(f"--sampling {settings.sampling}: give one of {', '.join(SAMPLINGS)}")
    rng = np.random.default_rng(settings.seed)
    if settings.sampling == "area":
        tiles = _area_tiles(area_3857, settings, holdout_3857, rng)
        return _inside_world([PlannedTile(f"g{index:05d}", tile) for index, tile in enumerate(tiles)], "the pairs")
    empty_count = round(settings.pairs * settings.empty_share)
    located = _located_tiles(points_3857, weights, settings, holdout_3857, rng, settings.pairs - empty_count)
    empty = _empty_tiles(points_3857, area_3857, settings, holdout_3857, rng, empty_count)
    return _inside_world([PlannedTile(f"p{index:05d}", tile) for index, tile in enumerate(located + empty)],
                         "the pairs")


def holdout_plan(holdout_lonlat: LonLatBounds, size_px: int, m_per_px: float, overlap_px: int) -> list[PlannedTile]:
    """The plain tiles of the held-out box, as an area render of it would place them, ids h{row}c{col}."""
    return [planned._replace(tile_id=f"h{planned.tile_id}", holdout=True)
            for planned in bbox_plan(holdout_lonlat, size_px, m_per_px, overlap_px)]


def _outside_holdout(tile: Tile, holdout_3857: Bounds3857 | None) -> bool:
    return holdout_3857 is None or not intersects(tile.bounds_3857, holdout_3857)


def _tile_at_3857(x_3857: float, y_3857: float, settings: PairSettings) -> Tile:
    lon, lat = lonlat_from_3857(x_3857, y_3857)
    return tile_at(lon, lat, settings.size_px, settings.m_per_px)


def _located_tiles(points_3857, weights, settings, holdout_3857, rng, count) -> list[Tile]:
    usable = weights > 0
    if count and not usable.any():
        raise LocgenError("no locations with a positive weight in the area; give --locations inside the OSM data")
    probability = np.where(usable, weights, 0) / weights[usable].sum() if usable.any() else None
    tiles = []
    while len(tiles) < count:
        for _ in range(MAX_TRIES_PER_TILE):
            x_3857, y_3857 = points_3857[rng.choice(len(points_3857), p=probability)]
            half_3857 = settings.size_px * settings.m_per_px * mercator_scale(lonlat_from_3857(x_3857, y_3857)[1]) / 2
            dx_3857, dy_3857 = rng.uniform(-1, 1, size=2) * settings.jitter * half_3857
            tile = _tile_at_3857(x_3857 + dx_3857, y_3857 + dy_3857, settings)
            if _outside_holdout(tile, holdout_3857):
                tiles.append(tile)
                break
        else:
            raise LocgenError("every location lies in the held-out region (--holdout); shrink it or add locations")
    return tiles


def _empty_tiles(points_3857, area_3857, settings, holdout_3857, rng, count) -> list[Tile]:
    tiles = []
    while len(tiles) < count:
        for _ in range(MAX_TRIES_PER_TILE):
            tile = _tile_at_3857(rng.uniform(area_3857.west, area_3857.east),
                                 rng.uniform(area_3857.south, area_3857.north), settings)
            bounds = tile.bounds_3857
            inside = contains(bounds, points_3857[:, 0], points_3857[:, 1])
            if _outside_holdout(tile, holdout_3857) and not inside.any():
                tiles.append(tile)
                break
        else:
            raise LocgenError(f"found no location-free place for {count} empty tiles in the area; "
                              "lower --empty-share or give a larger --bbox")
    return tiles


def _area_tiles(area_3857: Bounds3857, settings: PairSettings, holdout_3857: Bounds3857 | None,
                rng: np.random.Generator) -> list[Tile]:
    """`settings.pairs` tiles covering the area as it is: the cells of grids at random offsets that
    lie wholly inside the area and clear of the held-out region, one grid after another."""
    _, middle_lat = lonlat_from_3857(0.0, (area_3857.south + area_3857.north) / 2)
    step_3857 = settings.size_px * settings.m_per_px * mercator_scale(middle_lat)
    width_3857, height_3857 = area_3857.east - area_3857.west, area_3857.north - area_3857.south
    if width_3857 < step_3857 or height_3857 < step_3857:
        raise LocgenError("--sampling area: the training area is smaller than one tile; give a larger --bbox or "
                          "more OSM data")
    _check_tile_count(math.floor(width_3857 / step_3857) * math.floor(height_3857 / step_3857),
                      "--sampling area: a grid over the training area")
    tiles: list[Tile] = []
    empty_grids = 0  # in a row: a grid at an unlucky offset may lie wholly on the held-out box, not every grid
    while len(tiles) < settings.pairs:
        # Each grid starts up to a whole tile further east and north: its cells fall on other places.
        offset_x, offset_y = rng.uniform(0, 1, size=2) * [min(step_3857, width_3857 - step_3857),
                                                           min(step_3857, height_3857 - step_3857)]
        columns = math.floor((width_3857 - offset_x) / step_3857)
        rows = math.floor((height_3857 - offset_y) / step_3857)
        cells = [(area_3857.west + offset_x + (col + 0.5) * step_3857,
                  area_3857.south + offset_y + (row + 0.5) * step_3857)
                 for row in range(rows) for col in range(columns)]
        usable = [tile for tile in (_tile_at_3857(x, y, settings) for x, y in cells)
                  if _outside_holdout(tile, holdout_3857)]
        empty_grids = 0 if usable else empty_grids + 1
        if empty_grids == MAX_TRIES_PER_TILE:
            raise LocgenError("--sampling area: every tile of the training area touches the held-out region "
                              "(--holdout); shrink it or give a larger area")
        tiles += [usable[index] for index in rng.permutation(len(usable))]
    return tiles[:settings.pairs]
