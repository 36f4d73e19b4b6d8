"""The geo core: exact round trips and known values of Web Mercator (EPSG:3857)."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.core.errors import LocgenError
from components.core.geo import (
    MAX_LAT,
    WORLD_HALF_3857,
    LonLatBounds,
    check_bbox,
    lonlat_from_3857,
    lonlat_to_3857,
    parse_bbox,
    parse_latlon,
    tile_at,
    tile_from_bounds_3857,
)

lons = st.floats(-180, 180)
lats = st.floats(-MAX_LAT, MAX_LAT)
sizes = st.integers(16, 1024)
resolutions = st.floats(0.1, 50)


def test_known_values_of_the_web_mercator_extent():
    assert WORLD_HALF_3857 == pytest.approx(20037508.342789244, abs=1e-9)
    x_3857, y_3857 = lonlat_to_3857(180.0, MAX_LAT)
    assert float(x_3857) == pytest.approx(20037508.342789244, abs=1e-6)
    assert float(y_3857) == pytest.approx(20037508.342789244, abs=0.1)  # MAX_LAT is the square world's edge
    assert [float(v) for v in lonlat_to_3857(0.0, 0.0)] == pytest.approx([0.0, 0.0], abs=1e-6)


def test_known_value_of_helsinki():
    # EPSG:4326 -> EPSG:3857 of 24.9384 E, 60.1699 N as PROJ 9 computes it (pyproj 3.8 Transformer)
    x_3857, y_3857 = lonlat_to_3857(24.9384, 60.1699)
    assert float(x_3857) == pytest.approx(2776129.9891989734, abs=1e-6)
    assert float(y_3857) == pytest.approx(8437661.782002585, abs=1e-6)


@given(lons, lats)
def test_lonlat_metres_round_trip(lon, lat):
    back_lon, back_lat = lonlat_from_3857(*lonlat_to_3857(lon, lat))
    assert back_lon == pytest.approx(lon, abs=1e-9)
    assert back_lat == pytest.approx(lat, abs=1e-9)


@given(st.floats(-179, 179), st.floats(-85, 85), sizes, resolutions,
       st.floats(0, 1), st.floats(0, 1))
def test_pixel_round_trip_and_pixel_centres(lon, lat, size_px, m_per_px, u, v):
    tile = tile_at(lon, lat, size_px, m_per_px)
    col, row = u * size_px, v * size_px
    back_col, back_row = tile.lonlat_to_px(*tile.px_to_lonlat(col, row))
    assert float(back_col) == pytest.approx(col, abs=1e-6)
    assert float(back_row) == pytest.approx(row, abs=1e-6)
    # The centre of the tile is the corner shared by its four middle pixels (even sizes) or the
    # centre of its middle pixel (odd sizes): in both cases pixel coordinate size_px / 2.
    centre_col, centre_row = tile.lonlat_to_px(lon, lat)
    assert float(centre_col) == pytest.approx(size_px / 2, abs=1e-6)
    assert float(centre_row) == pytest.approx(size_px / 2, abs=1e-6)


@given(st.floats(-179, 179), st.floats(-85, 85), sizes, resolutions)
def test_ground_resolution_is_exact_at_the_centre_at_every_latitude(lon, lat, size_px, m_per_px):
    tile = tile_at(lon, lat, size_px, m_per_px)
    assert tile.m_per_px == pytest.approx(m_per_px, rel=1e-9)
    bounds = tile.bounds_3857
    # EPSG:3857 coordinates reach 2e7 m, where a float64 step is ~4 nm: widths are exact to 10 nm.
    assert bounds.east - bounds.west == pytest.approx(size_px * m_per_px / math.cos(math.radians(lat)), abs=1e-8)
    assert tuple(tile_from_bounds_3857(bounds, size_px)) == pytest.approx(tuple(tile), rel=1e-9, abs=1e-6)


def test_pixel_centre_convention():
    tile = tile_at(24.94, 60.17, 256, 2.0)
    west, _, _, north = tile.bounds_3857
    x_3857, y_3857 = tile.px_to_3857(0.5, 0.5)
    assert float(x_3857) == pytest.approx(west + tile.mpp_3857 / 2)
    assert float(y_3857) == pytest.approx(north - tile.mpp_3857 / 2)
    assert tile.pixel_centre_lonlat(0, 0) == pytest.approx(tile.px_to_lonlat(0.5, 0.5))


def test_bounds_in_lonlat_match_the_metres():
    tile = tile_at(24.94, 60.17)
    west, south = lonlat_from_3857(tile.bounds_3857.west, tile.bounds_3857.south)
    assert tile.bounds_lonlat[:2] == pytest.approx((west, south), abs=1e-12)


@pytest.mark.parametrize("lon, lat, message", [
    (24.9, 91.0, "latitude 91.0"),
    (24.9, 85.06, "latitude 85.06"),
    (181.0, 60.0, "longitude 181.0"),
    (float("nan"), 60.0, "must be numbers"),
])
def test_out_of_range_points_are_rejected(lon, lat, message):
    with pytest.raises(LocgenError, match=message):
        tile_at(lon, lat)


@pytest.mark.parametrize("text, message", [
    ("24.96,60.16,24.93,60.18", "empty or inverted"),
    ("24.93,60.18,24.96,60.16", "empty or inverted"),
    ("24.93,60.16,24.93,60.18", "empty or inverted"),
    ("24.93,60.16,24.96", "not WEST,SOUTH,EAST,NORTH"),
    ("a,b,c,d", "not WEST,SOUTH,EAST,NORTH"),
    ("24.93,60.16,24.96,91", "latitude 91.0"),
])
def test_bad_bboxes_are_rejected_with_the_fix(text, message):
    with pytest.raises(LocgenError, match=message):
        parse_bbox(text)


def test_parse_helpers():
    assert parse_bbox("24.93,60.16,24.96,60.18") == LonLatBounds(24.93, 60.16, 24.96, 60.18)
    assert parse_latlon("60.17,24.94") == (24.94, 60.17)
    with pytest.raises(LocgenError, match="latitude 91"):
        parse_latlon("91,24")
    assert check_bbox((1, 2, 3, 4)) == LonLatBounds(1, 2, 3, 4)
