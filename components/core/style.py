"""The map style: which OSM features are drawn, in which order, colour and width.

The style is data, versioned and hashed: every tile records `STYLE_VERSION` and `style_sha256()`,
so a model is never fed tiles of a style it was not trained on without it being visible.

Colours avoid the marker range (components.core.markers) on purpose: no colour is purple or
pink, and every pair blends (anti-aliased edges are convex mixes of two colours) to greys, not to
magenta; the renderer tests prove it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import NamedTuple

from components.core.markers import MARKER_RGB

STYLE_VERSION = "1"


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
        "marker_rgb": MARKER_RGB,  # part of the look the model learns
        "layers": [layer._asdict() for layer in LAYERS],
    }


@functools.cache  # the style is module data: hash it once, not for every tile
def style_sha256() -> str:
    canonical = json.dumps(style_document(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
