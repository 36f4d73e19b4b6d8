"""The map style: which OSM features are drawn, in which order, colour and width.

The style is data, versioned and hashed: every tile records `STYLE_VERSION` and `style_sha256()`,
so a model is never fed tiles of a style it was not trained on without it being visible.

Colours avoid the marker range on purpose: no colour is purple or pink, and every pair blends
(anti-aliased edges are convex mixes of two colours) to greys, not to magenta. The marker range
itself is defined here so the renderer tests can prove it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import NamedTuple

import numpy as np

STYLE_VERSION = "1"

MARKER_RGB = (255, 0, 255)

# The colour range a marker may take after a GAN repaints it: hue around magenta (300 deg),
# clearly saturated and bright. The base style must never produce a pixel in it.
MARKER_HUE_RANGE_DEG = (260.0, 340.0)
MARKER_MIN_SATURATION = 0.35
MARKER_MIN_VALUE = 0.35


class Layer(NamedTuple):
    """One drawing pass: features whose tags match `match` (key -> values, '*' for any)."""

    name: str
    geometry: str  # "area" (filled polygons with holes) or "line" (polylines)
    rgb: tuple[int, int, int]
    match: dict[str, tuple[str, ...]]
    width_m: float = 0.0  # ground width of lines


# Drawing order: first to last. The background (land) and the sea come first.
LAND_RGB = (234, 230, 221)
WATER_RGB = (166, 205, 226)
LAYERS: tuple[Layer, ...] = (
    Layer("sea", "area", WATER_RGB, {}),  # assembled from natural=coastline, not matched by tags
    Layer("green", "area", (196, 226, 174), {
        "leisure": ("park", "garden", "playground", "pitch", "recreation_ground", "common"),
        "landuse": ("grass", "forest", "meadow", "recreation_ground", "village_green", "cemetery",
                    "allotments", "orchard"),
        "natural": ("wood", "scrub", "grassland", "heath"),
    }),
    Layer("water", "area", WATER_RGB, {
        "natural": ("water",), "waterway": ("riverbank", "dock"), "landuse": ("reservoir", "basin"),
    }),
    Layer("waterway", "line", WATER_RGB, {"waterway": ("river", "canal", "stream", "ditch")}, 4.0),
    Layer("building", "area", (205, 195, 184), {"building": ("*",)}),
    Layer("footway", "line", (222, 200, 168), {
        "highway": ("footway", "path", "pedestrian", "steps", "track", "bridleway", "trail", "corridor"),
    }, 2.0),
    Layer("cycleway", "line", (104, 150, 205), {"highway": ("cycleway",)}, 2.5),
    Layer("road_minor", "line", (255, 255, 255), {
        "highway": ("service", "residential", "unclassified", "living_street", "road"),
    }, 7.0),
    Layer("road_tertiary", "line", (250, 248, 200), {"highway": ("tertiary", "tertiary_link")}, 9.0),
    Layer("road_secondary", "line", (246, 222, 150), {"highway": ("secondary", "secondary_link")}, 11.0),
    Layer("road_primary", "line", (250, 196, 120), {"highway": ("primary", "primary_link")}, 13.0),
    Layer("road_major", "line", (236, 160, 92), {
        "highway": ("trunk", "trunk_link", "motorway", "motorway_link"),
    }, 16.0),
    Layer("railway", "line", (120, 120, 120), {"railway": ("rail", "light_rail", "subway", "narrow_gauge")}, 3.0),
    Layer("tram", "line", (80, 80, 80), {"railway": ("tram",)}, 1.5),
)

LAYER_NAMES = tuple(layer.name for layer in LAYERS)

# Values that mean "not this feature" although the key is present.
NEGATIVE_VALUES = frozenset({"no", "none", "false", "0"})


def match_layer(tags, geometry: str) -> int | None:
    """Index of the first layer of this geometry whose rule matches the tags, else None."""
    for index, layer in enumerate(LAYERS):
        if layer.geometry != geometry:
            continue
        for key, values in layer.match.items():
            value = tags.get(key)
            if value is None or value in NEGATIVE_VALUES:
                continue
            if "*" in values or value in values:
                return index
    return None


def style_document() -> dict:
    """The style as plain data: what the hash covers."""
    return {
        "version": STYLE_VERSION,
        "land_rgb": LAND_RGB,
        "marker_rgb": MARKER_RGB,
        "layers": [layer._asdict() for layer in LAYERS],
    }


@functools.cache  # the style is module data: hash it once, not for every tile
def style_sha256() -> str:
    canonical = json.dumps(style_document(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def marker_range_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels of an (H, W, 3) RGB uint8 image that fall in the marker range."""
    pixels = rgb.astype(np.float32) / 255.0
    value = pixels.max(axis=-1)
    chroma = value - pixels.min(axis=-1)
    saturation = np.divide(chroma, value, out=np.zeros_like(value), where=value > 0)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # Standard RGB -> hue; only the sector between blue and red (180..360) can hold magenta.
    safe_chroma = np.where(chroma > 0, chroma, 1.0)
    hue_deg = np.where(
        value == red, (60.0 * (green - blue) / safe_chroma) % 360.0,
        np.where(value == green, 60.0 * (blue - red) / safe_chroma + 120.0,
                 60.0 * (red - green) / safe_chroma + 240.0))
    low, high = MARKER_HUE_RANGE_DEG
    return (chroma > 0) & (hue_deg >= low) & (hue_deg <= high) & \
        (saturation >= MARKER_MIN_SATURATION) & (value >= MARKER_MIN_VALUE)
