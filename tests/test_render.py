"""Rendering: markers land on the exact pixel of their lat/lon, the style never paints marker colours."""

import itertools
import json

import numpy as np
import osmium
import pytest
import shapely
from conftest import HELSINKI_PBF, KOTKA_PBF

from components.core.geo import LonLatBounds, lonlat_to_3857, tile_at
from components.core.markers import MARKER_RGB, marker_mask
from components.core.pngmeta import decode_png, read_png_text
from components.core.storage import open_store
from components.core.style import LAND_RGB, LAYERS, WATER_RGB
from components.core.tileset import GEOREF_TEXT_KEY, read_manifest, tile_of_row
from components.render.raster import draw_markers, render_map
from components.sources.osm import read_osm
from locgen.cli import main

HELSINKI_EXTENT = LonLatBounds(24.9351762, 60.1641550, 24.9534145, 60.1791130)
KOTKA_EXTENT = LonLatBounds(26.93, 60.52, 26.97, 60.54)
BICYCLE_POINTS = "osm:amenity=bicycle_rental,amenity=bicycle_parking"


@pytest.fixture(scope="module")
def helsinki_map():
    return read_osm([HELSINKI_PBF], HELSINKI_EXTENT)


@pytest.fixture(scope="module")
def helsinki_pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    assert main(["render", "--osm", str(HELSINKI_PBF), "--out", str(out), "--pairs", "40", "--city", "helsinki",
                 "--locations", BICYCLE_POINTS, "--seed", "7"]) == 0
    return out, read_manifest(open_store(str(out)))


def _image(tileset, row):
    return decode_png((tileset / row["path"]).read_bytes())


def test_every_manifest_point_is_magenta_in_a_and_not_in_its_b_twin(helsinki_pairs):
    tileset, rows = helsinki_pairs
    twins = {(row["id"], row["domain"]): row for row in rows}
    checked = 0
    for row in rows:
        if row["domain"] != "a":
            continue
        a_image, b_image = _image(tileset, row), _image(tileset, twins[row["id"], "b"])
        tile = tile_of_row(row)
        for lon, lat in row["points"]:
            col, row_px = (int(np.floor(v)) for v in tile.lonlat_to_px(lon, lat))
            assert tuple(a_image[row_px, col]) == MARKER_RGB
            assert not marker_mask(b_image[row_px:row_px + 1, col:col + 1]).any()
            checked += 1
    assert checked >= 40  # every located tile holds at least its seed location


def test_a_point_comes_back_from_its_marker_within_a_quarter_pixel():
    """Georeference round trip: lat/lon -> marker disc -> centroid of its pixels -> lat/lon.

    A hard-edged disc of radius 4 px quantises its centroid by at most ~0.23 px (measured over 500
    random sub-pixel positions), i.e. half a metre at 2 m/px.
    """
    rng = np.random.default_rng(3)
    blank = np.zeros((256, 256, 3), dtype=np.uint8)
    for lon, lat in zip(rng.uniform(-170, 170, 20), rng.uniform(-80, 80, 20)):
        tile = tile_at(lon, lat, 256, 2.0)
        target_col, target_row = rng.uniform(20, 236, 2)
        point_lonlat = tile.px_to_lonlat(target_col, target_row)
        marked = draw_markers(blank, tile, np.array([lonlat_to_3857(*point_lonlat)]), radius_px=4)
        rows_px, cols_px = np.nonzero(np.all(marked == MARKER_RGB, axis=-1))
        found_lon, found_lat = tile.px_to_lonlat(cols_px.mean() + 0.5, rows_px.mean() + 0.5)
        error_col, error_row = np.subtract(tile.lonlat_to_px(found_lon, found_lat), (target_col, target_row))
        assert abs(error_col) < 0.25 and abs(error_row) < 0.25


def test_markers_are_pure_discs_of_the_set_radius():
    tile = tile_at(24.94, 60.17, 64, 2.0)
    blank = np.zeros((64, 64, 3), dtype=np.uint8)
    marked = draw_markers(blank, tile, np.array([tile.px_to_3857(32.0, 32.0)]), radius_px=5)
    magenta = np.all(marked == MARKER_RGB, axis=-1)
    assert np.all(magenta | np.all(marked == 0, axis=-1))  # one pure colour, no blended edge
    assert magenta.sum() == pytest.approx(np.pi * 5 ** 2, rel=0.1)


def _sample_tiles(tmp_path, osm, extent, city):
    out = tmp_path / city
    assert main(["render", "--osm", str(osm), "--out", str(out), "--city", city, "--workers", "2",
                 "--bbox", ",".join(map(str, extent))]) == 0
    return out, read_manifest(open_store(str(out)))


def test_the_style_never_paints_in_the_marker_range_on_any_sample_tile(tmp_path):
    tiles = 0
    for osm, extent, city in [(HELSINKI_PBF, HELSINKI_EXTENT, "helsinki"), (KOTKA_PBF, KOTKA_EXTENT, "kotka")]:
        out, rows = _sample_tiles(tmp_path, osm, extent, city)
        for row in rows:
            image = _image(out, row)
            assert not marker_mask(image).any(), row["path"]
            tiles += 1
    # Tiles of 512 m with cores of 384 m (the default 64 px overlap): 3 x 5 cover central Helsinki, 6 x 6 Kotka
    assert tiles == 15 + 36


def test_no_blend_of_two_style_colours_reaches_the_marker_range():
    colours = {LAND_RGB, WATER_RGB} | {layer.rgb for layer in LAYERS}
    blends = [np.array(a) * t + np.array(b) * (1 - t)
              for a, b in itertools.combinations(colours, 2) for t in np.linspace(0, 1, 21)]
    assert not marker_mask(np.rint(np.array(blends)).astype(np.uint8)[None]).any()
    assert marker_mask(np.array([[MARKER_RGB, (230, 40, 220), (200, 90, 200)]], dtype=np.uint8)).all()


def test_the_png_carries_its_georeference_and_attribution(helsinki_pairs):
    tileset, rows = helsinki_pairs
    row = rows[0]
    text = read_png_text((tileset / row["path"]).read_bytes())
    georef = json.loads(text[GEOREF_TEXT_KEY])
    assert georef["bounds_3857"] == row["bounds_3857"]
    assert georef["bounds_lonlat"] == row["bounds_lonlat"]
    assert georef["size_px"] == 256 and georef["crs"] == "EPSG:3857"
    assert text["Copyright"] == "© OpenStreetMap contributors"


def test_manifest_rows_carry_lineage(helsinki_pairs):
    _, rows = helsinki_pairs
    assert len(rows) == 80 and {row["domain"] for row in rows} == {"a", "b"}
    for row in rows:
        assert row["city"] == "helsinki" and row["m_per_px"] == pytest.approx(2.0, rel=1e-9)
        assert row["style_version"] and len(row["style_sha256"]) == 64
        assert row["sources"][0]["sha256"] == "b73e9c2c82054d654209b0127f1c3287d5900d6780a6083bf3a45ead8ba3e5ee"
        if row["domain"] == "a":
            assert row["sources"][1]["uri"] == BICYCLE_POINTS


def test_sea_from_clipped_coastlines_is_water(helsinki_map):
    # Kaisaniemenlahti, a bay north of the railway station, bounded in the extract only by
    # coastline ways that the extract's edge cuts; the Kaisaniemi park south of it is land.
    tile = tile_at(24.9450, 60.1770, 16, 2.0)
    assert tuple(render_map(helsinki_map, tile)[8, 8]) == WATER_RGB
    park = tile_at(24.9450, 60.1750, 16, 2.0)
    assert tuple(render_map(helsinki_map, park)[8, 8]) != WATER_RGB


def test_no_sea_is_made_up_beyond_the_extract(helsinki_map):
    # East of the extract's stated edge (24.9534145 E) nothing is known: the cut coastlines must not
    # turn it into sea, nor into anything else.
    beyond = render_map(helsinki_map, tile_at(24.9545, 60.1650, 32, 2.0))  # off the South Harbour
    assert np.all(beyond == LAND_RGB)


def test_lines_are_anti_aliased(helsinki_map):
    image = render_map(helsinki_map, tile_at(24.944, 60.170))
    style_colours = {LAND_RGB, WATER_RGB} | {layer.rgb for layer in LAYERS}
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert len(colours - style_colours) > 100  # edge pixels blend, they are not stair-stepped


@pytest.mark.parametrize("suffix", [".osm", ".osm.bz2"])
def test_xml_extracts_give_the_same_map_as_the_pbf(tmp_path, helsinki_map, suffix):
    converted = tmp_path / f"helsinki{suffix}"
    header = osmium.io.Reader(str(HELSINKI_PBF), osmium.osm.osm_entity_bits.NOTHING).header()  # keeps the extent
    with osmium.SimpleWriter(str(converted), header=header) as writer:
        for obj in osmium.FileProcessor(str(HELSINKI_PBF)):
            writer.add(obj)
    from_xml = read_osm([converted], HELSINKI_EXTENT)
    for ours, theirs in zip(from_xml.features, helsinki_map.features):
        assert np.array_equal(ours, theirs)
    tile = tile_at(24.944, 60.170)
    assert np.array_equal(render_map(from_xml, tile), render_map(helsinki_map, tile))


def test_simplification_moves_no_line_by_more_than_its_tolerance(helsinki_map):
    simple = read_osm([HELSINKI_PBF], HELSINKI_EXTENT, simplify_3857=1.0)  # 1 EPSG:3857 m: 0.25 px here
    plain_f, simple_f = helsinki_map.features, simple.features
    assert len(simple_f.coords_3857) < 0.8 * len(plain_f.coords_3857)
    assert np.array_equal(plain_f.feature_rings, simple_f.feature_rings)
    for ring in range(len(plain_f.ring_offsets) - 1):
        before = plain_f.coords_3857[plain_f.ring_offsets[ring]:plain_f.ring_offsets[ring + 1]]
        after = simple_f.coords_3857[simple_f.ring_offsets[ring]:simple_f.ring_offsets[ring + 1]]
        assert shapely.hausdorff_distance(shapely.LineString(before), shapely.LineString(after)) <= 1.0 + 1e-9
