"""The baselines of the evaluation: naive ways to place as many points as the model has, drawn with a seed.

- `uniform_baseline`: uniform in ground area over the area;
- `roads_baseline`: uniform by ground length along the roads and paths of the map style;
- `class_baseline`: fitted on training cities. A place has a map class (`CLASS_LAYERS`, made of the
  style's layers): the class of the nearest drawn feature within `near_m` ground metres of it
  (lines as drawn, `Layer.width_m` wide, so 0 m anywhere on the drawn line; building outlines),
  ties going to the class listed first; else the topmost area it lies in (water over open land,
  as the map draws them); else `none`, nowhere near a mapped feature. `fit_class_shares` measures
  the shares of the classes among real points; `class_baseline` picks a class by those shares for
  each point, then a place of that class uniformly: by ground length along the class's lines (the
  roads, paths, railways and waterways, building outlines), by ground area for open land, water
  and none. A candidate place is classed like a real point and kept only when it has the class it
  was drawn for (a footway where it crosses a road is the road's), so a fit on the sampled points
  gives the shares back, up to sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import shapely

from components.core.errors import LocgenError
from components.core.geo import (
    LonLatBounds,
    bbox_text,
    bounds_to_3857,
    check_bbox,
    lonlat_from_3857,
    lonlat_to_3857,
    mercator_scale,
)
from components.core.style import LAYER_NAMES, LAYERS
from components.sources.osm import FeatureArrays, MapData

# Where a vehicle may stand in the roads baseline: every line layer the style matches on `highway`
# (footway, cycleway, road_minor ... road_major), i.e. everything drawn as a road or a path.
ROAD_LAYERS = tuple(layer.name for layer in LAYERS if layer.geometry == "line" and "highway" in layer.match)

# The map classes of the fitted baseline, each made of style layers; every layer is in exactly one.
# The line classes (building outlines among them) come first: their order breaks ties.
CLASS_LAYERS: dict[str, tuple[str, ...]] = {
    "major_road": ("road_tertiary", "road_secondary", "road_primary", "road_major"),
    "minor_road": ("road_minor",),  # residential, service, unclassified, living street
    "path": ("footway", "cycleway"),
    "building": ("building",),  # its outline
    "other": ("railway", "tram", "waterway"),
    "open_land": ("green",),  # parks, grass, woods
    "water": ("water", "sea"),
    "none": (),  # nowhere near a mapped feature
}
CLASSES = tuple(CLASS_LAYERS)
AREA_CLASSES = ("open_land", "water")  # placed by ground area inside their areas; `none` by area outside all
NONE = CLASSES.index("none")
NEAR_M = 5.0  # a place within this many ground metres of a drawn feature has its class
_LAYER_CLASS = np.array([next(index for index, layers in enumerate(CLASS_LAYERS.values()) if name in layers)
                         for name in LAYER_NAMES])
_HALF_WIDTH_M = np.array([layer.width_m / 2 for layer in LAYERS])
SHARES_TOLERANCE = 1e-6  # how far from 1 the shares may sum (rounding in a file)
PROBE_DRAWS = 10_000  # candidate places drawn per class first, to see whether the class has a place in the area
MIN_PROBE_HITS = 10  # fewer kept of the probe: the class covers under 0.1 % of where it is looked for, absent
MAX_BATCH = 1_000_000  # candidates classed at once (memory)
MAX_DRAWS = 50_000_000  # candidates one class may take, at the most


# --- uniform and along the roads ----------------------------------------------------------------

def uniform_baseline(count: int, bbox: LonLatBounds, seed: int) -> np.ndarray:
    """(count, 2) lon/lat uniform in ground area over the bbox, reproducible with the seed.

    Longitude is uniform; sin(latitude) is uniform, which makes the density uniform in area on a
    sphere (Archimedes: the area of a band is proportional to the difference of the sines), where
    uniform degrees would crowd the poleward side by sec(latitude). The ellipsoid's flattening
    changes the area density by the factor (1 - e^2 sin^2 lat)^-2, whose relative change across an
    area is below 1.4 % per radian of latitude: under 0.005 % across 20 km, so it is left out.
    """
    bbox = check_bbox(bbox, "bbox")
    return _uniform(np.random.default_rng(seed), count, bbox)


def _uniform(rng: np.random.Generator, count: int, bbox: LonLatBounds) -> np.ndarray:
    lon = rng.uniform(bbox.west, bbox.east, count)
    lat = np.degrees(np.arcsin(rng.uniform(math.sin(math.radians(bbox.south)),
                                           math.sin(math.radians(bbox.north)), count)))
    return _into_area(lon, lat, bbox)


def roads_baseline(count: int, bbox: LonLatBounds, map_data: MapData, seed: int) -> np.ndarray:
    """(count, 2) lon/lat uniform by ground length along the roads and paths (ROAD_LAYERS) in the bbox.

    Lines are cut to the bbox; a segment is picked with a probability proportional to its ground
    length (its EPSG:3857 length times cos(latitude) at its middle), then a point uniformly along it
    (within a segment the scale is constant to 1e-7, so uniform in EPSG:3857 is uniform on the ground).
    """
    bbox = check_bbox(bbox, "bbox")
    segments = line_segments_3857(map_data.features, bbox, ROAD_LAYERS)
    if not segments[2].sum() > 0:
        raise LocgenError(f"no road or path ({', '.join(ROAD_LAYERS)}) inside bbox {bbox_text(bbox)} in the OSM data; "
                          "give --osm data that covers the area, or leave --osm out to skip the roads baseline")
    return _along(np.random.default_rng(seed), count, segments, bbox)


def line_segments_3857(features: FeatureArrays, bbox: LonLatBounds,
                       layers: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and end (EPSG:3857 metres, (K, 2) each) and ground length in metres (K,) of the segments of
    the rings of the `layers` features (lines, or the outlines of areas), cut to the bbox."""
    chosen = [LAYER_NAMES.index(name) for name in layers]
    ring_feature = np.repeat(np.arange(len(features.layer)), np.diff(features.feature_rings))
    vertex_ring = np.repeat(np.arange(len(ring_feature)), np.diff(features.ring_offsets))
    on_line = np.isin(features.layer[ring_feature[vertex_ring]], chosen)
    # shapely numbers the lines it builds 0, 1, ... with no gap: renumber the chosen rings so.
    _, line_index = np.unique(vertex_ring[on_line], return_inverse=True)
    lines = shapely.linestrings(features.coords_3857[on_line], indices=line_index)
    # Each piece of a line the bbox cuts into is its own part: no segment may join two pieces.
    parts = shapely.get_parts(shapely.clip_by_rect(lines, *bounds_to_3857(bbox)))
    coords_3857, part = shapely.get_coordinates(parts, return_index=True)
    same_part = part[1:] == part[:-1]
    start_3857, end_3857 = coords_3857[:-1][same_part], coords_3857[1:][same_part]
    _, middle_lat = lonlat_from_3857((start_3857[:, 0] + end_3857[:, 0]) / 2, (start_3857[:, 1] + end_3857[:, 1]) / 2)
    return start_3857, end_3857, np.hypot(*(end_3857 - start_3857).T) * np.cos(np.radians(middle_lat))


def _along(rng: np.random.Generator, count: int, segments: tuple[np.ndarray, np.ndarray, np.ndarray],
           bbox: LonLatBounds) -> np.ndarray:
    """`count` points uniform by ground length along the segments (see `roads_baseline`), as (count, 2) lon/lat."""
    start_3857, end_3857, ground_m = segments
    segment = rng.choice(len(ground_m), size=count, p=ground_m / ground_m.sum())
    along = rng.random(count)[:, None]
    points_3857 = start_3857[segment] + along * (end_3857[segment] - start_3857[segment])
    return _into_area(*lonlat_from_3857(points_3857[:, 0], points_3857[:, 1]), bbox)


def _into_area(lon, lat, bbox: LonLatBounds) -> np.ndarray:
    """lon/lat as (N, 2), nudged inside the half-open bbox where rounding put a point on its east/north edge."""
    lon = np.clip(lon, bbox.west, np.nextafter(bbox.east, -math.inf))
    lat = np.clip(lat, bbox.south, np.nextafter(bbox.north, -math.inf))
    return np.column_stack([lon, lat])


# --- map classes ----------------------------------------------------------------------------------

def map_margin_3857(bbox: LonLatBounds, near_m: float = NEAR_M) -> float:
    """How far (EPSG:3857 metres) around the bbox map features can decide the class of a place in it."""
    return (near_m + float(_HALF_WIDTH_M.max())) * mercator_scale(max(abs(bbox.south), abs(bbox.north)))


class _Classifier:
    """The map class of places (see the module docstring), from the features of one map."""

    def __init__(self, features: FeatureArrays, near_m: float):
        self.near_m = near_m
        ring_layer = features.layer[np.repeat(np.arange(len(features.layer)), np.diff(features.feature_rings))]
        ring_class = _LAYER_CLASS[ring_layer]
        vertex_ring = np.repeat(np.arange(len(ring_layer)), np.diff(features.ring_offsets))
        is_area = np.isin(ring_class, [CLASSES.index(name) for name in AREA_CLASSES])
        edge, area = np.flatnonzero(~is_area), np.flatnonzero(is_area)
        self.edges = self._rings(features, vertex_ring, edge, shapely.linestrings)
        self.edge_class, self.edge_half_width_m = ring_class[edge], _HALF_WIDTH_M[ring_layer[edge]]
        self.areas = shapely.polygons(self._rings(features, vertex_ring, area, shapely.linearrings))
        # The feature of each area ring: its rings are filled even-odd (outer rings and their holes).
        self.area_feature = np.repeat(np.arange(len(features.layer)), np.diff(features.feature_rings))[area]
        self.feature_layer = features.layer
        self.edge_tree, self.area_tree = shapely.STRtree(self.edges), shapely.STRtree(self.areas)

    @staticmethod
    def _rings(features: FeatureArrays, vertex_ring: np.ndarray, rings: np.ndarray, make: Callable) -> np.ndarray:
        chosen = np.isin(vertex_ring, rings)
        _, index = np.unique(vertex_ring[chosen], return_inverse=True)
        return make(features.coords_3857[chosen], indices=index)

    def classify(self, lonlat: np.ndarray) -> np.ndarray:
        """The class index (into CLASSES) of each (N, 2) lon/lat place."""
        classes = np.full(len(lonlat), NONE)
        if not len(lonlat):
            return classes
        points = shapely.points(np.column_stack(lonlat_to_3857(lonlat[:, 0], lonlat[:, 1])))
        scale = 1.0 / np.cos(np.radians(lonlat[:, 1]))  # EPSG:3857 metres per ground metre
        reach_3857 = (self.near_m + float(self.edge_half_width_m.max(initial=0.0))) * float(scale.max())
        point, edge = self.edge_tree.query(points, predicate="dwithin", distance=reach_3857)
        # Ground metres to the drawn edge (0 on the line): the nearest within near_m, ties to the class listed first.
        distance_m = np.maximum(shapely.distance(points[point], self.edges[edge]) / scale[point]
                                - self.edge_half_width_m[edge], 0.0)
        near = distance_m <= self.near_m
        point, distance_m, edge_class = point[near], distance_m[near], self.edge_class[edge[near]]
        order = np.lexsort((edge_class, distance_m, point))
        first = np.unique(point[order], return_index=True)[1]
        classes[point[order][first]] = edge_class[order][first]
        rest = np.flatnonzero(classes == NONE)
        point, ring = self.area_tree.query(points[rest], predicate="within")
        # Inside a feature: inside an odd number of its rings. Of the features a place is inside, the topmost drawn.
        inside, times = np.unique(np.column_stack([point, self.area_feature[ring]]), axis=0, return_counts=True)
        inside = inside[times % 2 == 1]
        order = np.lexsort((-self.feature_layer[inside[:, 1]], inside[:, 0]))
        first = np.unique(inside[order, 0], return_index=True)[1]
        topmost = inside[order][first]
        classes[rest[topmost[:, 0]]] = _LAYER_CLASS[self.feature_layer[topmost[:, 1]]]
        return classes


def classify_points(points_lonlat: np.ndarray, map_data: MapData, near_m: float = NEAR_M) -> np.ndarray:
    """The class (a name of CLASSES) of each (N, 2) lon/lat place on the map."""
    indices = _Classifier(map_data.features, near_m).classify(np.asarray(points_lonlat, np.float64).reshape(-1, 2))
    return np.array(CLASSES)[indices]


def fit_class_shares(points_lonlat: np.ndarray, map_data: MapData, near_m: float = NEAR_M) -> dict[str, float]:
    """The share of each class (every name of CLASSES, `none` included) among the points: they sum to 1."""
    classes = classify_points(points_lonlat, map_data, near_m)
    if not len(classes):
        raise LocgenError("no point to fit the class shares on; give real locations inside the OSM data")
    return {name: float(np.mean(classes == name)) for name in CLASSES}


def shares_problem(shares) -> str | None:
    """What is wrong with class shares (a name -> share mapping), or None when they are right."""
    if not isinstance(shares, dict) or not shares:
        return f"no shares: an object of classes ({', '.join(CLASSES)}) and their shares"
    unknown = sorted(set(shares) - set(CLASSES))
    if unknown:
        return f"unknown class {', '.join(map(repr, unknown))} (the classes are {', '.join(CLASSES)})"
    bad = [name for name, share in shares.items()
           if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1]
    if bad:
        return f"the share of {', '.join(bad)} is not a number from 0 to 1"
    total = math.fsum(shares.values())
    if abs(total - 1) > SHARES_TOLERANCE:
        return f"the shares sum to {total:.6g}, not 1"
    return None


# --- the fitted baseline --------------------------------------------------------------------------

class _Pool:
    """Candidate places of one class, drawn in batches and kept where they have that class."""

    def __init__(self, name: str, draw: Callable[[np.random.Generator, int], np.ndarray], classifier: _Classifier):
        self.name, self.draw, self.classifier = name, draw, classifier
        self.kept, self.drawn = [np.zeros((0, 2))], 0

    def hits(self) -> int:
        return sum(len(kept) for kept in self.kept)

    def extend(self, rng: np.random.Generator, count: int) -> None:
        candidates = self.draw(rng, count)
        self.kept.append(candidates[self.classifier.classify(candidates) == CLASSES.index(self.name)])
        self.drawn += count

    def take(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """The first `count` places kept, drawing more as needed (the first kept of uniform draws are uniform)."""
        while self.hits() < count:
            if self.drawn >= MAX_DRAWS:
                raise LocgenError(f"the fitted baseline kept {self.hits()} places of class {self.name} of "
                                  f"{self.drawn:,} drawn, short of {count}; give a larger --bbox or shares without "
                                  "this class")
            needed = (count - self.hits()) * self.drawn / max(self.hits(), 1)
            self.extend(rng, int(min(MAX_BATCH, math.ceil(1.25 * needed) + 64)))
        return np.concatenate(self.kept)[:count]


def _class_draw(name: str, features: FeatureArrays,
                bbox: LonLatBounds) -> Callable[[np.random.Generator, int], np.ndarray] | None:
    """How candidate places of a class are drawn in the bbox, or None where it has no line or area there."""
    if name in AREA_CLASSES:
        in_class = _LAYER_CLASS[features.layer] == CLASSES.index(name)
        if not in_class.any():
            return None
        # The window: the bbox, cut to the box of the class's areas.
        lon, lat = lonlat_from_3857(np.concatenate([features.bbox_3857[in_class, 0], features.bbox_3857[in_class, 2]]),
                                    np.concatenate([features.bbox_3857[in_class, 1], features.bbox_3857[in_class, 3]]))
        window = LonLatBounds(max(lon.min(), bbox.west), max(lat.min(), bbox.south), min(lon.max(), bbox.east),
                              min(lat.max(), bbox.north))
        if window.west >= window.east or window.south >= window.north:
            return None
        return lambda rng, count: _uniform(rng, count, window)
    if name == "none":
        return lambda rng, count: _uniform(rng, count, bbox)
    segments = line_segments_3857(features, bbox, CLASS_LAYERS[name])
    if not segments[2].sum() > 0:
        return None
    return lambda rng, count: _along(rng, count, segments, bbox)


def class_baseline(count: int, bbox: LonLatBounds, map_data: MapData, shares: dict[str, float], seed: int,
                   near_m: float = NEAR_M) -> np.ndarray:
    """(count, 2) lon/lat: for each point a class by the shares, then a place of that class in the bbox.

    A class with no place in the area (no such line or area in the bbox, or under MIN_PROBE_HITS of
    the PROBE_DRAWS candidates drawn for it kept) is left out and the other shares scaled up to sum
    to 1. Reproducible with the seed. See the module docstring.
    """
    bbox = check_bbox(bbox, "bbox")
    problem = shares_problem(shares)
    if problem:
        raise LocgenError(f"class shares: {problem}")
    if count == 0:
        return np.zeros((0, 2))
    rng = np.random.default_rng(seed)
    classifier = _Classifier(map_data.features, near_m)
    pools = []
    for name in CLASSES:
        draw = _class_draw(name, map_data.features, bbox) if shares.get(name, 0) > 0 else None
        if draw is not None:
            pool = _Pool(name, draw, classifier)
            pool.extend(rng, PROBE_DRAWS)
            if pool.hits() >= MIN_PROBE_HITS:
                pools.append(pool)
    if not pools:
        given = ", ".join(name for name in CLASSES if shares.get(name, 0) > 0)
        raise LocgenError(f"none of the classes with a share ({given}) has a place inside bbox {bbox_text(bbox)} in "
                          "the OSM data; give --osm data that covers the area, or shares fitted where such places are")
    weights = np.array([shares[pool.name] for pool in pools])
    quotas = rng.multinomial(count, weights / weights.sum())
    points = np.concatenate([pool.take(rng, quota) for pool, quota in zip(pools, quotas, strict=True)])
    return points[rng.permutation(count)]
