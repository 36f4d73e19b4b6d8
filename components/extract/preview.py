"""A preview of an area for people who would rather look than read: the tiles mosaicked, the
extracted points drawn as rings, and the OSM attribution in the corner."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from components.core.geo import Bounds3857, Tile
from components.core.pngmeta import encode_png
from components.core.provenance import OSM_ATTRIBUTION

MAX_SIDE_PX = 4096  # a city's 15 x 15 grid of 256 px tiles is 3840 px: shown at full size
RING_RGB = (0, 160, 255)  # blue rings: they stand out on the map and on the magenta dots
RING_RADIUS_PX = 6
# The preview's own georeference, so that a page can put other points over it (the report's real points).
PREVIEW_TEXT_KEY = "locgen:preview"


class Mosaic:
    """A canvas over the union of the tiles, at the finest tile's scale (capped at MAX_SIDE_PX)."""

    def __init__(self, tiles: list[Tile]):
        bounds = np.array([tile.bounds_3857 for tile in tiles])
        self.bounds_3857 = Bounds3857(bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max())
        width_3857 = self.bounds_3857.east - self.bounds_3857.west
        height_3857 = self.bounds_3857.north - self.bounds_3857.south
        self.mpp_3857 = max(min(tile.mpp_3857 for tile in tiles), max(width_3857, height_3857) / MAX_SIDE_PX)
        # The extent is a whole number of tile pixels: float noise must not add a row.
        height_px, width_px = (math.ceil(extent_3857 / self.mpp_3857 - 1e-6)
                               for extent_3857 in (height_3857, width_3857))
        self.canvas = np.full((height_px, width_px, 3), 255, dtype=np.uint8)

    def _px(self, x_3857, y_3857):
        """EPSG:3857 metres -> continuous canvas pixel coordinates (col, row)."""
        col = (np.asarray(x_3857) - self.bounds_3857.west) / self.mpp_3857
        return col, (self.bounds_3857.north - np.asarray(y_3857)) / self.mpp_3857

    def paste(self, tile: Tile, rgb: np.ndarray, inset_px: float = 0.0) -> None:
        """Place a tile at its position, resampled to the canvas scale (to the nearest canvas pixel);
        with `inset_px`, only its core (the part it owns when tiles overlap: no seams of border bands)."""
        inset = int(round(inset_px))
        if inset:
            rgb = rgb[inset:rgb.shape[0] - inset, inset:rgb.shape[1] - inset]
            tile = tile._replace(size_px=tile.size_px - 2 * inset)
        west, south, east, north = tile.bounds_3857
        (left, right), (top, bottom) = (np.rint(v).astype(int) for v in self._px([west, east], [north, south]))
        height, width = self.canvas.shape[:2]
        if right <= left or bottom <= top:
            return
        resized = cv2.resize(rgb, (right - left, bottom - top), interpolation=cv2.INTER_AREA)
        clip_top, clip_left = max(0, -top), max(0, -left)
        clip_bottom, clip_right = min(bottom, height) - top, min(right, width) - left
        self.canvas[top + clip_top:top + clip_bottom, left + clip_left:left + clip_right] = \
            resized[clip_top:clip_bottom, clip_left:clip_right]

    def png(self, points_3857: np.ndarray) -> bytes:
        """The preview with the points (EPSG:3857 metres) drawn and the attribution, as PNG bytes."""
        image = self.canvas.copy()
        cols, rows = self._px(points_3857[:, 0], points_3857[:, 1]) if len(points_3857) else ([], [])
        for col, row in zip(cols, rows):
            cv2.circle(image, (round(col * 16), round(row * 16)), RING_RADIUS_PX * 16, RING_RGB, 2, cv2.LINE_AA, 4)
        georef = {"bounds_3857": list(self.bounds_3857), "mpp_3857": self.mpp_3857,
                  "size_px": [image.shape[1], image.shape[0]]}
        return encode_png(_with_attribution(image), {"Copyright": OSM_ATTRIBUTION, "Source": "locgen extract",
                                                     PREVIEW_TEXT_KEY: json.dumps(georef)})


def _with_attribution(rgb: np.ndarray) -> np.ndarray:
    """The attribution in the bottom-right corner, on a white box so it reads on any map."""
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    left, top, right, bottom = draw.textbbox((0, 0), OSM_ATTRIBUTION, font=font)
    x = image.width - (right - left) - 6
    y = image.height - (bottom - top) - 6
    draw.rectangle((x - 3, y - 3 + top, image.width, image.height), fill=(255, 255, 255))
    draw.text((x, y), OSM_ATTRIBUTION, fill=(40, 40, 40), font=font)
    return np.asarray(image)
