"""Draw one tile from MapData: anti-aliased, sub-pixel accurate, a few OpenCV calls per layer.

OpenCV takes fixed-point coordinates (`shift` fractional bits), so vertices land within 1/16 px
of their exact position. OpenCV's integer pixel k is the centre of pixel k, while our continuous
pixel coordinates put that centre at k + 0.5: hence the half-pixel offset in `_to_fixed`.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from components.core.geo import Tile
from components.core.markers import MARKER_RGB
from components.core.style import LAND_RGB, LAYERS
from components.sources.osm import FeatureArrays, MapData, touching

SHIFT_BITS = 4
FIXED_ONE = 1 << SHIFT_BITS


def _to_fixed(tile: Tile, coords_3857: np.ndarray) -> np.ndarray:
    """EPSG:3857 metres -> OpenCV fixed-point pixel coordinates (int32)."""
    bounds = tile.bounds_3857
    col = (coords_3857[:, 0] - bounds.west) / tile.mpp_3857 - 0.5
    row = (bounds.north - coords_3857[:, 1]) / tile.mpp_3857 - 0.5
    return np.rint(np.stack([col, row], axis=1) * FIXED_ONE).astype(np.int32)


def _visible_rings(features: FeatureArrays, tile: Tile) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The features whose bbox touches the tile: their indices, their ring counts, their fixed-point rings."""
    visible = np.flatnonzero(touching(features, tile.bounds_3857))
    ring_counts = features.feature_rings[visible + 1] - features.feature_rings[visible]
    rings = _ranges(features.feature_rings[visible], ring_counts)
    vertex_counts = features.ring_offsets[rings + 1] - features.ring_offsets[rings]
    vertices = _ranges(features.ring_offsets[rings], vertex_counts)
    fixed = _to_fixed(tile, features.coords_3857[vertices])
    ends = np.cumsum(vertex_counts).tolist()
    return visible, ring_counts, [fixed[start:end] for start, end in zip([0] + ends[:-1], ends)]


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, start + count) for each pair, without a Python loop."""
    total = int(counts.sum())
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return offsets + np.arange(total)


def _line_thickness_px(width_m: float, tile: Tile) -> int:
    # OpenCV's thickness is whole pixels; positions stay sub-pixel.
    return max(1, int(round(width_m / tile.m_per_px)))


@functools.lru_cache(maxsize=4)
def _land(size_px: int) -> np.ndarray:
    # Copying a ready background is ~40x faster than numpy broadcasting a colour into 3 channels.
    return np.tile(np.array(LAND_RGB, dtype=np.uint8), (size_px, size_px, 1))


def render_map(map_data: MapData, tile: Tile) -> np.ndarray:
    """The plain map of a tile as an (H, W, 3) RGB uint8 array (domain b)."""
    image = _land(tile.size_px).copy()
    visible, ring_counts, rings = _visible_rings(map_data.features, tile)
    ring_ends = np.concatenate([[0], np.cumsum(ring_counts)]).tolist()
    # Features are sorted by layer: each layer's visible features are one contiguous run.
    layer_ends = np.searchsorted(map_data.features.layer[visible], np.arange(len(LAYERS)), side="right").tolist()
    first = 0
    for style, last in zip(LAYERS, layer_ends):
        if style.geometry == "line" and last > first:
            cv2.polylines(image, rings[ring_ends[first]:ring_ends[last]], False, style.rgb,
                          _line_thickness_px(style.width_m, tile), cv2.LINE_AA, SHIFT_BITS)
        # One call per area: OpenCV fills the rings of one call even-odd, which makes the holes of
        # a multipolygon but would also cut overlapping features out of each other.
        for feature in range(first, last) if style.geometry == "area" else ():
            cv2.fillPoly(image, rings[ring_ends[feature]:ring_ends[feature + 1]], style.rgb, cv2.LINE_AA,
                         SHIFT_BITS)
        first = last
    return image


def draw_markers(image: np.ndarray, tile: Tile, points_3857: np.ndarray, radius_px: float) -> np.ndarray:
    """A copy of the image with a filled disc of pure MARKER_RGB at each point (EPSG:3857 metres).

    A pixel belongs to a disc when its centre lies within radius_px of the point: exact to the
    sub-pixel, and one pure colour (no anti-aliased rim), so every marker pixel is MARKER_RGB.
    """
    marked = image.copy()
    height_px, width_px = image.shape[:2]
    cols, rows = tile.px_from_3857(points_3857.reshape(-1, 2)[:, 0], points_3857.reshape(-1, 2)[:, 1])
    for col, row in zip(np.atleast_1d(cols), np.atleast_1d(rows)):
        top, bottom = max(0, int(np.floor(row - radius_px))), min(height_px, int(np.ceil(row + radius_px)) + 1)
        left, right = max(0, int(np.floor(col - radius_px))), min(width_px, int(np.ceil(col + radius_px)) + 1)
        if top >= bottom or left >= right:
            continue
        centre_rows, centre_cols = np.mgrid[top:bottom, left:right] + 0.5
        inside = (centre_cols - col) ** 2 + (centre_rows - row) ** 2 <= radius_px ** 2
        marked[top:bottom, left:right][inside] = MARKER_RGB
    return marked
