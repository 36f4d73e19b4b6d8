"""Web Mercator (EPSG:3857) geometry: lon/lat <-> EPSG:3857 metres <-> pixels, exact both ways.

Conventions used by every stage:
- names say the frame of what they hold: `_3857` is EPSG:3857 metres (x east, y north), which
  are 1 / cos(latitude) ground metres; `_m` is ground metres (geodesic distances, radii, sizes);
  `_lonlat` and `_deg` are degrees;
- bounds are `LonLatBounds` (degrees) or `Bounds3857` (EPSG:3857 metres): two types, so that a
  signature says which it takes;
- pixel coordinates are continuous: pixel (col, row) covers [col, col + 1) x [row, row + 1) and
  its centre is (col + 0.5, row + 0.5); rows grow southwards;
- a tile is a square of `size_px` pixels around a centre, with `mpp_3857` EPSG:3857 metres per
  pixel. `tile_at` derives that scale from a ground resolution (`m_per_px`, true metres per
  pixel at the tile's centre), so tiles look the same at every latitude.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from components.core.errors import LocgenError

EARTH_RADIUS_M = 6378137.0
MAX_LAT = 85.05112878  # where the square Web Mercator world ends
WORLD_HALF_3857 = math.pi * EARTH_RADIUS_M  # 20037508.342789244


class LonLatBounds(NamedTuple):
    """West, south, east, north in degrees (longitude, latitude)."""

    west: float
    south: float
    east: float
    north: float


class Bounds3857(NamedTuple):
    """West, south, east, north in EPSG:3857 metres."""

    west: float
    south: float
    east: float
    north: float


def check_lonlat(lon: float, lat: float, what: str = "point") -> None:
    """Raise a LocgenError naming `what` when lon/lat is outside the Web Mercator world."""
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise LocgenError(f"{what}: longitude/latitude must be numbers, got {lon}, {lat}")
    if abs(lat) > MAX_LAT:
        raise LocgenError(f"{what}: latitude {lat} is outside ±{MAX_LAT} (Web Mercator); "
                          "give a latitude between -85.05 and 85.05")
    if abs(lon) > 180:
        raise LocgenError(f"{what}: longitude {lon} is outside ±180; give a longitude between -180 and 180")


def check_bounds_3857(bounds: Bounds3857, what: str, fix: str) -> None:
    """Raise a LocgenError naming `what` and `fix` unless the bounds are finite, ordered and inside the
    square Web Mercator world."""
    west, south, east, north = bounds
    if not all(math.isfinite(value) and abs(value) <= WORLD_HALF_3857 for value in bounds):
        raise LocgenError(f"{what}: EPSG:3857 bounds {west:g},{south:g},{east:g},{north:g} reach beyond the Web "
                          f"Mercator world (±{WORLD_HALF_3857:.0f} m); {fix}")
    if not (west < east and south < north):
        raise LocgenError(f"{what}: EPSG:3857 bounds {west:g},{south:g},{east:g},{north:g} are empty or inverted; "
                          f"{fix}")


def check_bbox(bbox: LonLatBounds, what: str = "--bbox") -> LonLatBounds:
    """Validate a lon/lat bbox (west, south, east, north) and return it as LonLatBounds."""
    west, south, east, north = bbox
    check_lonlat(west, south, what)
    check_lonlat(east, north, what)
    if west >= east or south >= north:
        raise LocgenError(f"{what}: {west},{south},{east},{north} is empty or inverted; "
                          "give WEST,SOUTH,EAST,NORTH with west < east and south < north")
    return LonLatBounds(west, south, east, north)


def parse_bbox(text: str, what: str = "--bbox") -> LonLatBounds:
    """Parse 'WEST,SOUTH,EAST,NORTH' in degrees."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise LocgenError(f"{what}: '{text}' is not WEST,SOUTH,EAST,NORTH in degrees (e.g. 24.93,60.16,24.96,60.18)")
    return check_bbox(LonLatBounds(*values), what)


def bbox_text(bbox: LonLatBounds) -> str:
    """'WEST,SOUTH,EAST,NORTH', as --bbox takes it."""
    return ",".join(f"{value:g}" for value in bbox)


def parse_latlon(text: str, what: str = "--center") -> tuple[float, float]:
    """Parse 'LAT,LON' in degrees; returns (lon, lat)."""
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise LocgenError(f"{what}: '{text}' is not LAT,LON in degrees (e.g. 60.17,24.94)") from None
    check_lonlat(lon, lat, what)
    return lon, lat


def lonlat_to_3857(lon, lat):
    """Degrees -> EPSG:3857 metres. Works on floats and numpy arrays."""
    x = np.radians(lon) * EARTH_RADIUS_M
    y = np.log(np.tan(np.pi / 4 + np.radians(lat) / 2)) * EARTH_RADIUS_M
    return x, y


def lonlat_from_3857(x_3857, y_3857):
    """EPSG:3857 metres -> degrees. Works on floats and numpy arrays."""
    lon = np.degrees(np.asarray(x_3857) / EARTH_RADIUS_M)
    lat = np.degrees(2 * np.arctan(np.exp(np.asarray(y_3857) / EARTH_RADIUS_M)) - np.pi / 2)
    if np.ndim(lon) == 0:
        return float(lon), float(lat)
    return lon, lat


def mercator_scale(lat: float) -> float:
    """EPSG:3857 metres per ground metre at a latitude (1 / cos(lat))."""
    return 1.0 / math.cos(math.radians(lat))


def bounds_to_3857(bounds: LonLatBounds) -> Bounds3857:
    west, south = lonlat_to_3857(bounds.west, bounds.south)
    east, north = lonlat_to_3857(bounds.east, bounds.north)
    return Bounds3857(float(west), float(south), float(east), float(north))


def bounds_to_lonlat(bounds: Bounds3857) -> LonLatBounds:
    west, south = lonlat_from_3857(bounds.west, bounds.south)
    east, north = lonlat_from_3857(bounds.east, bounds.north)
    return LonLatBounds(west, south, east, north)


class Tile(NamedTuple):
    """A square, north-up tile in EPSG:3857. Its exact bounds follow from these four values."""

    centre_x_3857: float
    centre_y_3857: float
    size_px: int
    mpp_3857: float  # EPSG:3857 metres per pixel

    @property
    def bounds_3857(self) -> Bounds3857:
        half_3857 = self.size_px * self.mpp_3857 / 2
        return Bounds3857(self.centre_x_3857 - half_3857, self.centre_y_3857 - half_3857,
                      self.centre_x_3857 + half_3857, self.centre_y_3857 + half_3857)

    @property
    def bounds_lonlat(self) -> LonLatBounds:
        return bounds_to_lonlat(self.bounds_3857)

    @property
    def centre_lonlat(self) -> tuple[float, float]:
        return lonlat_from_3857(self.centre_x_3857, self.centre_y_3857)

    @property
    def m_per_px(self) -> float:
        """Ground metres per pixel at the tile's centre."""
        return self.mpp_3857 / mercator_scale(self.centre_lonlat[1])

    def px_from_3857(self, x_3857, y_3857):
        """EPSG:3857 metres -> continuous pixel coordinates (col, row) in this tile."""
        bounds = self.bounds_3857
        return (np.asarray(x_3857) - bounds.west) / self.mpp_3857, (bounds.north - np.asarray(y_3857)) / self.mpp_3857

    def px_to_3857(self, col, row):
        """Continuous pixel coordinates -> EPSG:3857 metres."""
        bounds = self.bounds_3857
        return bounds.west + np.asarray(col) * self.mpp_3857, bounds.north - np.asarray(row) * self.mpp_3857

    def lonlat_to_px(self, lon, lat):
        return self.px_from_3857(*lonlat_to_3857(lon, lat))

    def px_to_lonlat(self, col, row):
        return lonlat_from_3857(*self.px_to_3857(col, row))

    def pixel_centre_lonlat(self, col: int, row: int) -> tuple[float, float]:
        """Lon/lat of the centre of pixel (col, row)."""
        return self.px_to_lonlat(col + 0.5, row + 0.5)


def tile_at(lon: float, lat: float, size_px: int = 256, m_per_px: float = 2.0) -> Tile:
    """The tile centred on lon/lat whose ground resolution at its centre is `m_per_px`."""
    check_lonlat(lon, lat, "tile centre")
    if size_px <= 0 or m_per_px <= 0:
        raise LocgenError(f"tile size {size_px} px at {m_per_px} m/px: both must be positive")
    x_3857, y_3857 = lonlat_to_3857(lon, lat)
    return Tile(float(x_3857), float(y_3857), int(size_px), m_per_px * mercator_scale(lat))


def tile_from_bounds_3857(bounds: Bounds3857, size_px: int) -> Tile:
    """The tile whose exact EPSG:3857 bounds are given (as stored in a manifest or PNG chunk)."""
    width_3857 = bounds.east - bounds.west
    return Tile((bounds.west + bounds.east) / 2, (bounds.south + bounds.north) / 2, size_px, width_3857 / size_px)


def intersects(a: Bounds3857, b: Bounds3857) -> bool:
    return a.west < b.east and b.west < a.east and a.south < b.north and b.south < a.north


def contains(bounds: Bounds3857 | LonLatBounds, x, y):
    """Whether points lie inside bounds (west/south inclusive, east/north exclusive)."""
    return (bounds.west <= x) & (x < bounds.east) & (bounds.south <= y) & (y < bounds.north)


def expand(bounds: Bounds3857, margin_3857: float) -> Bounds3857:
    return Bounds3857(bounds.west - margin_3857, bounds.south - margin_3857, bounds.east + margin_3857,
                      bounds.north + margin_3857)
