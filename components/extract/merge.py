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

from components.core.geo import Bounds3857, lonlat_from_3857

# Candidates are searched in EPSG:3857 with the largest scale of the points and 10 % to spare;
# a candidate's ground distance (EPSG:3857 over its local scale) is exact to far better than that,
# so geopy's geodesic decides only the pairs within 10 % of the radius.
SEARCH_MARGIN = 1.1


class TilePoint(NamedTuple):
    """A detection placed on Earth: EPSG:3857 metres, and what the merge needs to know."""

    x_3857: float
    y_3857: float
    tile_index: int  # position of its tile in the extraction's tile list
    area_px: int
    score: float
    touches_edge: bool


def merge_duplicates(points: list[TilePoint], tile_bounds_3857: list[Bounds3857], dedupe_m: float) -> list[list[int]]:
    """Clusters of point indices, one per real dot (singletons included), in first-seen order."""
    cluster_of = list(range(len(points)))
    members = {index: [index] for index in range(len(points))}
    tiles_of = {index: {point.tile_index} for index, point in enumerate(points)}
    for first, second in _duplicate_pairs(points, tile_bounds_3857, dedupe_m):
        a, b = cluster_of[first], cluster_of[second]
        if a == b or tiles_of[a] & tiles_of[b]:
            continue  # already one, or it would hold two dots of one tile
        if len(members[a]) < len(members[b]):
            a, b = b, a  # move the smaller cluster
        for index in members[b]:
            cluster_of[index] = a
        members[a].extend(members.pop(b))
        tiles_of[a] |= tiles_of.pop(b)
    return sorted(members.values(), key=min)


def _duplicate_pairs(points: list[TilePoint], tile_bounds_3857: list[Bounds3857],
                     dedupe_m: float) -> list[tuple[int, int]]:
    """Pairs of detections in different tiles that may be one dot, nearest first."""
    if len(points) < 2 or dedupe_m <= 0:
        return []
    xy_3857 = np.array([(point.x_3857, point.y_3857) for point in points])
    tile = np.array([point.tile_index for point in points])
    touches = np.array([point.touches_edge for point in points])
    _, lat = lonlat_from_3857(xy_3857[:, 0], xy_3857[:, 1])
    scale = 1.0 / np.cos(np.radians(lat))  # EPSG:3857 metres per ground metre at each point
    # In EPSG:3857 a ground distance grows by the scale: search with the largest one.
    pairs = cKDTree(xy_3857).query_pairs(dedupe_m * scale.max() * SEARCH_MARGIN, output_type="ndarray")
    first, second = pairs[:, 0], pairs[:, 1]
    bounds = np.array(tile_bounds_3857)
    margin_3857 = dedupe_m * scale[first]
    maybe = (tile[first] != tile[second]) & (
        (touches[first] & touches[second])
        | (_inside(xy_3857[first], bounds[tile[second]], margin_3857)
           & _inside(xy_3857[second], bounds[tile[first]], margin_3857)))
    first, second = first[maybe], second[maybe]
    # Over a few metres the local scale makes this the ground distance to well under 0.1 %: only
    # pairs that close to the radius need the geodesic to decide.
    distance_m = np.hypot(*(xy_3857[first] - xy_3857[second]).T) / ((scale[first] + scale[second]) / 2)
    borderline = np.flatnonzero(np.abs(distance_m - dedupe_m) < dedupe_m * (SEARCH_MARGIN - 1))
    distance_m[borderline] = [_geodesic_m(points[first[k]], points[second[k]]) for k in borderline]
    keep = distance_m <= dedupe_m
    order = np.argsort(distance_m[keep], kind="stable")
    return list(zip(first[keep][order].tolist(), second[keep][order].tolist()))


def _inside(xy_3857: np.ndarray, bounds: np.ndarray, margin_3857: np.ndarray) -> np.ndarray:
    """Whether each point lies in its tile's bounds grown by margin_3857 (EPSG:3857)."""
    return (bounds[:, 0] - margin_3857 <= xy_3857[:, 0]) & (xy_3857[:, 0] < bounds[:, 2] + margin_3857) \
        & (bounds[:, 1] - margin_3857 <= xy_3857[:, 1]) & (xy_3857[:, 1] < bounds[:, 3] + margin_3857)


def _geodesic_m(a: TilePoint, b: TilePoint) -> float:
    lon_a, lat_a = lonlat_from_3857(a.x_3857, a.y_3857)
    lon_b, lat_b = lonlat_from_3857(b.x_3857, b.y_3857)
    return geodesic((lat_a, lon_a), (lat_b, lon_b)).meters


def merged_position(points: list[TilePoint], cluster: list[int]) -> tuple[float, float]:
    """EPSG:3857 metres of one dot from its detections (see the module docstring)."""
    whole = [index for index in cluster if not points[index].touches_edge] or cluster
    weights = np.array([points[index].area_px for index in whole], dtype=np.float64)
    xy_3857 = np.array([(points[index].x_3857, points[index].y_3857) for index in whole])
    x_3857, y_3857 = np.average(xy_3857, axis=0, weights=weights)
    return float(x_3857), float(y_3857)
