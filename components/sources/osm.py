"""Read OpenStreetMap data (.osm.pbf, .osm, .osm.bz2) into flat arrays the renderer draws fast.

pyosmium streams the file once: node locations are resolved from an in-memory index,
multipolygon relations and closed ways are assembled into areas, and only the features whose
bounding box touches the requested area (plus a margin) are kept. Everything is projected to
EPSG:3857 metres once, here, so rendering a tile is array arithmetic and a few OpenCV calls.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import osmium
import shapely
from shapely.geometry import LineString, box
from shapely.ops import linemerge, polygonize, unary_union

from components.core.errors import LocgenError
from components.core.geo import Bounds3857, LonLatBounds, bounds_to_3857, expand, intersects, lonlat_to_3857
from components.core.provenance import file_sha256
from components.core.style import LAYER_NAMES, LAYERS, match_layer


class FeatureArrays(NamedTuple):
    """Every feature of the map, flattened (feature -> rings -> vertices) and sorted by layer.

    One set of arrays for all layers lets the renderer pick a tile's features with a handful of
    numpy calls, whatever the number of layers.
    """

    coords_3857: np.ndarray  # (V, 2) float64 EPSG:3857 metres of every ring/line, concatenated
    ring_offsets: np.ndarray  # (R + 1,) int64: ring r is coords_3857[ring_offsets[r]:ring_offsets[r + 1]]
    feature_rings: np.ndarray  # (F + 1,) int64: feature f owns rings feature_rings[f]:feature_rings[f + 1]
    bbox_3857: np.ndarray  # (F, 4) float64 west, south, east, north of each feature
    layer: np.ndarray  # (F,) int64 index into LAYERS, ascending


def touching(features: FeatureArrays, bounds_3857: Bounds3857) -> np.ndarray:
    """(F,) bool: the features whose bbox overlaps the box (what a tile draws, or counts as its content)."""
    bbox_3857 = features.bbox_3857
    return ((bbox_3857[:, 0] < bounds_3857.east) & (bbox_3857[:, 2] > bounds_3857.west)
            & (bbox_3857[:, 1] < bounds_3857.north) & (bbox_3857[:, 3] > bounds_3857.south))


class SourceRecord(NamedTuple):
    uri: str
    kind: str
    sha256: str


class MapData(NamedTuple):
    features: FeatureArrays
    sources: list[SourceRecord]
    simplify_3857: float  # the generalisation the lines went through: it shapes the pixels too


class _FeatureBuilder:
    """Collects the rings of each layer's features before they become FeatureArrays."""

    def __init__(self):
        self.by_layer: list[list[list[np.ndarray]]] = [[] for _ in LAYERS]

    def add(self, layer_index: int, rings_3857: list[np.ndarray]) -> None:
        self.by_layer[layer_index].append(rings_3857)

    def build(self, simplify_3857: float = 0.0) -> FeatureArrays:
        features = [feature for layer in self.by_layer for feature in layer]
        rings = _simplified([ring for feature in features for ring in feature], simplify_3857)
        ring_sizes = np.array([len(ring) for ring in rings], dtype=np.int64)
        rings_per_feature = np.array([len(feature) for feature in features], dtype=np.int64)
        coords_3857 = np.concatenate(rings) if rings else np.zeros((0, 2))
        bbox_3857 = np.array([[*np.concatenate(f).min(axis=0), *np.concatenate(f).max(axis=0)] for f in features])
        layer = np.repeat(np.arange(len(LAYERS)), [len(layer) for layer in self.by_layer])
        return FeatureArrays(coords_3857, np.concatenate([[0], np.cumsum(ring_sizes)]),
                             np.concatenate([[0], np.cumsum(rings_per_feature)]), bbox_3857.reshape(-1, 4), layer)


def _simplified(rings: list[np.ndarray], tolerance_3857: float) -> list[np.ndarray]:
    """Rings and lines without the vertices that move them by less than tolerance_3857 (Douglas-Peucker).

    A quarter of a pixel changes nothing visible and spares OpenCV a quarter of its segments. A
    ring that would collapse below 3 vertices stays as it is.
    """
    if tolerance_3857 <= 0 or not rings:
        return rings
    sizes = [len(ring) for ring in rings]
    lines = shapely.linestrings(np.concatenate(rings), indices=np.repeat(np.arange(len(rings)), sizes))
    coords, index = shapely.get_coordinates(shapely.simplify(lines, tolerance_3857, preserve_topology=False),
                                            return_index=True)
    simplified = np.split(coords, np.flatnonzero(np.diff(index)) + 1)
    return [new if len(new) >= min(3, len(old)) else old for old, new in zip(rings, simplified, strict=True)]


def _project(lonlats: list[tuple[float, float]]) -> np.ndarray:
    lon_lat = np.asarray(lonlats, dtype=np.float64)
    x_3857, y_3857 = lonlat_to_3857(lon_lat[:, 0], lon_lat[:, 1])
    return np.stack([x_3857, y_3857], axis=1)


def _node_lonlats(nodes) -> list[tuple[float, float]]:
    """Locations of a way's or ring's nodes; nodes cut off by the extract are left out."""
    return [(node.lon, node.lat) for node in nodes if node.location.valid()]


def _keep(rings_3857: list[np.ndarray], area_3857: Bounds3857) -> bool:
    allv = np.concatenate(rings_3857)
    feature_bounds = Bounds3857(*allv.min(axis=0), *allv.max(axis=0))
    return intersects(feature_bounds, area_3857)


def _read_file(path: Path, area_3857: Bounds3857, builder: _FeatureBuilder,
               coastlines: list[np.ndarray]) -> None:
    """Stream one file into the feature builder (areas, lines) and the coastline list."""
    entities = osmium.osm.NODE | osmium.osm.WAY | osmium.osm.RELATION | osmium.osm.AREA
    processor = osmium.FileProcessor(str(path), entities).with_areas()
    for obj in processor:
        if obj.is_way():
            coastline = obj.tags.get("natural") == "coastline"
            layer_index = match_layer(obj.tags, "line")
            if layer_index is None and not coastline:
                continue
            points = _node_lonlats(obj.nodes)
            rings_3857 = [_project(points)] if len(points) >= 2 else []
            if coastline:
                coastlines.extend(rings_3857)
            if layer_index is None:
                continue
        elif obj.is_area():
            layer_index = match_layer(obj.tags, "area")
            if layer_index is None:
                continue
            rings_3857 = []
            for outer in obj.outer_rings():
                rings_3857.append(_project(_node_lonlats(outer)))
                rings_3857.extend(_project(_node_lonlats(inner)) for inner in obj.inner_rings(outer))
            rings_3857 = [ring for ring in rings_3857 if len(ring) >= 3]
        else:
            continue
        if rings_3857 and _keep(rings_3857, area_3857):
            builder.add(layer_index, rings_3857)


def sea_polygons(coastlines: list[np.ndarray], area_3857: Bounds3857) -> list[list[np.ndarray]]:
    """Sea inside the area, from coastline ways (OSM: land on the left, water on the right).

    The coastline pieces and the area's border cut the area into faces; a face is sea when more
    probe points just right of the coastline fall in it than just left of it.
    """
    if not coastlines or area_3857.west >= area_3857.east or area_3857.south >= area_3857.north:
        return []  # no coastline, or an area outside the data
    frame = box(*area_3857)
    merged = linemerge([LineString(c) for c in coastlines])
    reach_3857 = math.hypot(area_3857.east - area_3857.west, area_3857.north - area_3857.south)
    chains = [_extend_open_ends(np.asarray(line.coords), reach_3857) for line in getattr(merged, "geoms", [merged])]
    faces = list(polygonize(unary_union([frame.exterior] + [LineString(c).intersection(frame) for c in chains])))
    probes_right, probes_left = _coastline_probes(coastlines)
    seas = []
    for face in faces:
        right = int(shapely.contains_xy(face, probes_right[:, 0], probes_right[:, 1]).sum())
        left = int(shapely.contains_xy(face, probes_left[:, 0], probes_left[:, 1]).sum())
        if right > left:
            polygons = getattr(face, "geoms", [face])
            for polygon in polygons:
                seas.append([np.asarray(polygon.exterior.coords)]
                            + [np.asarray(hole.coords) for hole in polygon.interiors])
    return seas


def _extend_open_ends(chain: np.ndarray, reach_3857: float) -> np.ndarray:
    """A coastline chain whose open ends go on straight for reach_3857.

    Extracts cut the coastline at their edge; going on in the direction of the last segment
    carries the cut ends out to the frame, so the chain still divides the area into land and sea.
    """
    if np.allclose(chain[0], chain[-1]):
        return chain

    def beyond(end: np.ndarray, before: np.ndarray) -> np.ndarray:
        direction = end - before
        length = math.hypot(*direction)
        return end + direction / length * reach_3857 if length > 0 else end

    return np.vstack([beyond(chain[0], chain[1]), chain, beyond(chain[-1], chain[-2])])


def _coastline_probes(coastlines: list[np.ndarray], offset_3857: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Points offset_3857 to the right and to the left of every coastline segment's middle."""
    segments = [(c[:-1], c[1:]) for c in coastlines]
    start = np.concatenate([s for s, _ in segments])
    end = np.concatenate([e for _, e in segments])
    direction = end - start
    length = np.hypot(direction[:, 0], direction[:, 1])
    valid = length > 0
    middle, direction, length = (start + end)[valid] / 2, direction[valid], length[valid]
    right_normal = np.stack([direction[:, 1], -direction[:, 0]], axis=1) / length[:, None]
    return middle + offset_3857 * right_normal, middle - offset_3857 * right_normal


def _unreadable(path: Path, error: Exception) -> LocgenError:
    return LocgenError(f"--osm {path}: not a readable OSM file ({error}); "
                       "download it again or check that it is .osm.pbf, .osm or .osm.bz2")


def header_bounds(path: Path) -> LonLatBounds | None:
    """The bbox an OSM file's header states (extracts usually state one), else None."""
    try:
        box = osmium.io.Reader(str(path), osmium.osm.osm_entity_bits.NOTHING).header().box()
    except RuntimeError as error:
        raise _unreadable(path, error) from None
    if not box.valid():
        return None
    return LonLatBounds(box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)


def _sea_frame(area_3857: Bounds3857, paths: list[Path]) -> Bounds3857:
    """Where sea may be drawn: the area, cut to the extent the files state.

    Outside an extract nothing is known, not even the coastline: sea assembled from coastlines that
    the extract cuts must not spill past its edge.
    """
    extents = [header_bounds(path) for path in paths]
    if None in extents:
        return area_3857
    extent_3857 = [bounds_to_3857(extent) for extent in extents]
    return Bounds3857(max(area_3857.west, min(e.west for e in extent_3857)),
                      max(area_3857.south, min(e.south for e in extent_3857)),
                      min(area_3857.east, max(e.east for e in extent_3857)),
                      min(area_3857.north, max(e.north for e in extent_3857)))


def read_osm(paths: list[Path], area_lonlat: LonLatBounds, margin_3857: float = 200.0,
             uris: list[str] | None = None, simplify_3857: float = 0.0) -> MapData:
    """Read the features of the style that touch the area (lon/lat) plus margin_3857 (EPSG:3857 metres).

    `uris` name the sources in the lineage when the files are local copies (of s3:// objects, of
    Overpass answers); by default the paths themselves. `simplify_3857` (EPSG:3857 metres) drops
    vertices that move a line by less than that: give a fraction of a pixel.
    """
    area_3857 = expand(bounds_to_3857(area_lonlat), margin_3857)
    builder = _FeatureBuilder()
    coastlines: list[np.ndarray] = []
    sources = []
    for path, uri in zip(map(Path, paths), uris or [str(path) for path in paths], strict=True):
        if not path.is_file():
            raise LocgenError(f"--osm {uri}: no such file; give an .osm.pbf/.osm/.osm.bz2 file or 'overpass'")
        try:
            _read_file(path, area_3857, builder, coastlines)
        except RuntimeError as error:
            raise _unreadable(path, error) from None
        sources.append(SourceRecord(uri, "osm", file_sha256(path)))
    for rings_3857 in sea_polygons(coastlines, _sea_frame(area_3857, [Path(path) for path in paths])):
        builder.add(LAYER_NAMES.index("sea"), rings_3857)
    features = builder.build(simplify_3857)
    if not len(features.bbox_3857):
        raise LocgenError(f"no OSM map features in {tuple(round(v, 6) for v in area_lonlat)} in "
                          f"{', '.join(source.uri for source in sources)}; "
                          "choose an area inside the data or another OSM source")
    return MapData(features, sources, simplify_3857)
