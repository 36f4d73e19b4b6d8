"""One point per real dot across tiles: merge the detections that are the same dot seen twice.

A dot is seen in two tiles only where they overlap (the whole dot lies in both) or where the
border between them cuts it (each tile holds a part). Detections from two tiles are merged when
they are within `dedupe_m` (geodesic, geopy) and both lie in the other's tile, or both touch
their tile's border; a cluster never takes two detections from one tile, so two vehicles that
stand close together stay two points. The merged point is the area-weighted mean of its whole
(not cut) detections, or of all its parts when every one is cut: two halves of a cut disc give
back the disc's centre.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from geopy.distance import geodesic
from scipy.spatial import cKDTree

from components.core.geo import Bounds, contains, expand, m_to_lonlat, mercator_scale

# The candidate search runs on EPSG:3857 metres divided by the Mercator scale at the points'
# mean latitude (ground metres, locally); across a few km the scale varies by well under 1 %, so
# 10 % extra search radius never misses a pair that geopy puts within dedupe_m.
SEARCH_MARGIN = 1.1


class TilePoint(NamedTuple):
    """A detection placed on Earth: EPSG:3857 metres, and what the merge needs to know."""

    x_m: float
    y_m: float
    tile_index: int  # position of its tile in the extraction's tile list
    area_px: int
    score: float
    touches_edge: bool


def merge_duplicates(points: list[TilePoint], tile_bounds_m: list[Bounds], dedupe_m: float) -> list[list[int]]:
    """Clusters of point indices, one per real dot (singletons included), in first-seen order."""
    cluster_of = list(range(len(points)))
    members = {index: [index] for index in range(len(points))}
    tiles_of = {index: {point.tile_index} for index, point in enumerate(points)}
    for first, second in _duplicate_pairs(points, tile_bounds_m, dedupe_m):
        a, b = cluster_of[first], cluster_of[second]
        if a == b or tiles_of[a] & tiles_of[b]:
            continue  # already one, or it would hold two dots of one tile
        for index in members[b]:
            cluster_of[index] = a
        members[a].extend(members.pop(b))
        tiles_of[a] |= tiles_of.pop(b)
    return sorted(members.values(), key=min)


def _duplicate_pairs(points: list[TilePoint], tile_bounds_m: list[Bounds], dedupe_m: float) -> list[tuple[int, int]]:
    """Pairs of detections in different tiles that may be one dot, nearest first."""
    if len(points) < 2 or dedupe_m <= 0:
        return []
    xy_m = np.array([(point.x_m, point.y_m) for point in points])
    _, mean_lat = m_to_lonlat(xy_m[:, 0].mean(), xy_m[:, 1].mean())
    ground = xy_m / mercator_scale(mean_lat)
    pairs = []
    for first, second in cKDTree(ground).query_pairs(dedupe_m * SEARCH_MARGIN, output_type="ndarray"):
        a, b = points[first], points[second]
        if a.tile_index == b.tile_index or not _may_be_one_dot(a, b, tile_bounds_m, dedupe_m):
            continue
        distance_m = _geodesic_m(a, b)
        if distance_m <= dedupe_m:
            pairs.append((distance_m, int(first), int(second)))
    return [(first, second) for _, first, second in sorted(pairs)]


def _may_be_one_dot(a: TilePoint, b: TilePoint, tile_bounds_m: list[Bounds], dedupe_m: float) -> bool:
    if a.touches_edge and b.touches_edge:
        return True
    margin_m = dedupe_m * mercator_scale(m_to_lonlat(a.x_m, a.y_m)[1])
    return bool(contains(expand(tile_bounds_m[b.tile_index], margin_m), a.x_m, a.y_m)
                and contains(expand(tile_bounds_m[a.tile_index], margin_m), b.x_m, b.y_m))


def _geodesic_m(a: TilePoint, b: TilePoint) -> float:
    lon_a, lat_a = m_to_lonlat(a.x_m, a.y_m)
    lon_b, lat_b = m_to_lonlat(b.x_m, b.y_m)
    return geodesic((lat_a, lon_a), (lat_b, lon_b)).meters


def merged_position(points: list[TilePoint], cluster: list[int]) -> tuple[float, float]:
    """EPSG:3857 metres of one dot from its detections (see the module docstring)."""
    whole = [index for index in cluster if not points[index].touches_edge] or cluster
    weights = np.array([points[index].area_px for index in whole], dtype=np.float64)
    xy_m = np.array([(points[index].x_m, points[index].y_m) for index in whole])
    x_m, y_m = np.average(xy_m, axis=0, weights=weights)
    return float(x_m), float(y_m)
