"""Extraction: every rendered dot comes back once, within a pixel, also from GAN-like tiles."""

import csv
import json

import cv2
import numpy as np
import pytest
from conftest import HELSINKI_PBF
from geopy.distance import geodesic
from s3server import unique_prefix

from components.core.detect import detect_markers
from components.core.errors import LocgenError
from components.core.geo import LonLatBounds, tile_at
from components.core.markers import MARKER_RGB
from components.core.pngmeta import decode_png, encode_png, read_png_text
from components.core.points import write_points
from components.core.provenance import OSM_ATTRIBUTION
from components.core.storage import open_store
from components.core.tileset import MANIFEST_KEY, png_text, read_manifest
from components.extract.job import CSV_COLUMNS, ExtractSettings, extract
from components.render.raster import draw_markers, render_map
from components.sources.osm import read_osm
from locgen.cli import main

AREA = LonLatBounds(24.9395, 60.1665, 24.9505, 60.1765)  # inside the Helsinki extract, 2 x 3 tiles of 512 m
M_PER_PX = 2.0


def spaced_points(rng, count: int, min_spacing_m: float, area: LonLatBounds = AREA) -> np.ndarray:
    """Random lon/lat points in the area, no two closer than min_spacing_m."""
    points = []
    while len(points) < count:
        lon, lat = rng.uniform(area.west, area.east), rng.uniform(area.south, area.north)
        if all(geodesic((lat, lon), (other[1], other[0])).meters >= min_spacing_m for other in points):
            points.append((lon, lat))
    return np.array(points)


def write_points_csv(path, lonlat: np.ndarray) -> str:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["latitude", "longitude"])
        writer.writerows([(lat, lon) for lon, lat in lonlat])
    return str(path)


def render_area(tmp_path, lonlat: np.ndarray, overlap_px: int, name: str = "tiles") -> str:
    out = str(tmp_path / name)
    points_csv = write_points_csv(tmp_path / f"{name}.csv", lonlat)
    assert main(["render", "--osm", str(HELSINKI_PBF), "--out", out, "--city", "helsinki", "--bbox",
                 ",".join(map(str, AREA)), "--overlap-px", str(overlap_px), "--locations", points_csv]) == 0
    return out


def extract_points(tmp_path, tiles: str, *extra: str) -> list[dict]:
    out = tmp_path / "points.csv"
    assert main(["extract", "--tiles", tiles, "--out", str(out), *extra]) == 0
    with out.open() as file:
        return list(csv.DictReader(file))


def match(truth_lonlat: np.ndarray, found: list[dict], tolerance_m: float) -> tuple[int, int, list[float]]:
    """(matched truth points, unmatched found points, errors in metres), one-to-one, nearest first."""
    pairs = sorted((geodesic((lat, lon), (float(row["latitude"]), float(row["longitude"]))).meters, t, f)
                   for t, (lon, lat) in enumerate(truth_lonlat) for f, row in enumerate(found))
    used_truth, used_found, errors = set(), set(), []
    for distance_m, t, f in pairs:
        if distance_m <= tolerance_m and t not in used_truth and f not in used_found:
            used_truth.add(t)
            used_found.add(f)
            errors.append(distance_m)
    return len(used_truth), len(found) - len(used_found), errors


@pytest.mark.parametrize("overlap_px", [0, 48])
def test_round_trip_recovers_every_point_once_within_a_pixel(tmp_path, capsys, overlap_px):
    # With overlap 48 px a point near a border is seen whole in two tiles; with 0 a dot on the
    # border is cut in two: both must come back as one point.
    truth = spaced_points(np.random.default_rng(overlap_px), 60, min_spacing_m=30)
    found = extract_points(tmp_path, render_area(tmp_path, truth, overlap_px))
    matched, extra, errors = match(truth, found, tolerance_m=M_PER_PX)
    assert (matched, extra) == (len(truth), 0)
    assert len(found) == len(truth)
    assert max(errors) <= M_PER_PX  # within one pixel's ground size, each point exactly once


def test_b_twins_give_nothing(tmp_path):
    tiles = render_area(tmp_path, spaced_points(np.random.default_rng(1), 30, 30), 0)
    store = open_store(tiles)
    b_rows = [row for row in read_manifest(store) if row["domain"] == "b"]
    assert len(b_rows) == 6
    assert all(detect_markers(decode_png(store.get_bytes(row["path"]))) == [] for row in b_rows)


def gan_like(rgb: np.ndarray, rng) -> np.ndarray:
    """What a generator's output looks like: soft edges, noise, a hue drift."""
    blurred = cv2.GaussianBlur(rgb, (0, 0), 1.0)
    hsv = cv2.cvtColor(blurred, cv2.COLOR_RGB2HSV_FULL).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + rng.choice([-14, 14])) % 256  # +-20 degrees
    shifted = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL)
    return np.clip(shifted + rng.normal(0, 8, shifted.shape), 0, 255).astype(np.uint8)


def test_gan_like_tiles_with_merged_pairs_keep_recall_and_precision_above_095(tmp_path):
    """Blur (sigma 1 px), noise (sigma 8), hue shift (+-20 deg), and half of the dots merged in pairs:
    partners 5.5 to 7 px from each other with markers of radius 3 px, so each pair is one blob."""
    rng = np.random.default_rng(7)
    singles = spaced_points(rng, 40, min_spacing_m=40)
    angle = rng.uniform(0, 2 * np.pi, 20)
    offset_m = rng.uniform(5.5, 7.0, 20) * M_PER_PX
    partners = singles[:20] + np.stack([offset_m * np.cos(angle) / (111320 * np.cos(np.radians(singles[:20, 1]))),
                                        offset_m * np.sin(angle) / 110574], axis=1)
    truth = np.vstack([singles, partners])
    tiles = render_area(tmp_path, truth, 0)
    store = open_store(tiles)
    for row in read_manifest(store):  # repaint the a tiles the way a GAN would, georeference kept
        if row["domain"] == "a":
            degraded = gan_like(decode_png(store.get_bytes(row["path"])), rng)
            store.put_bytes(row["path"], encode_png(degraded, png_text(row)))
    found = extract_points(tmp_path, tiles)
    matched, extra, _ = match(truth, found, tolerance_m=M_PER_PX)
    recall, precision = matched / len(truth), (len(found) - extra) / len(found)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision)


def test_a_point_seen_in_two_overlapping_tiles_is_reported_once(tmp_path):
    map_data = read_osm([HELSINKI_PBF], AREA)
    store = open_store(str(tmp_path / "two"))
    left, right = tile_at(24.9440, 60.1700), tile_at(24.9440 + 0.0046, 60.1700)  # ~256 m apart: 50 % overlap
    point_m = np.array([left.px_to_3857(200.0, 128.0)])
    rows = []
    for tile_id, tile in [("left", left), ("right", right)]:
        row = {"id": tile_id, "path": f"a/{tile_id}.png", "domain": "a", "city": "helsinki", "crs": "EPSG:3857",
               "size_px": 256, "m_per_px": tile.m_per_px, "mpp_3857": tile.mpp_3857,
               "bounds_3857": list(tile.bounds_3857), "bounds_lonlat": list(tile.bounds_lonlat),
               "style_version": "1", "style_sha256": "", "inputs_sha256": ""}
        store.put_bytes(row["path"], encode_png(draw_markers(render_map(map_data, tile), tile, point_m, 3),
                                                png_text(row)))
        rows.append(row)
    store.put_bytes(MANIFEST_KEY, "".join(json.dumps(row) + "\n" for row in rows).encode())
    found = extract_points(tmp_path, str(tmp_path / "two"))
    assert len(found) == 1
    expected_lon, expected_lat = left.px_to_lonlat(200.0, 128.0)
    assert geodesic((expected_lat, expected_lon), (float(found[0]["latitude"]), float(found[0]["longitude"]))).meters \
        < 0.5 * M_PER_PX


def test_images_alone_are_georeferenced_by_their_text_chunk(tmp_path):
    truth = spaced_points(np.random.default_rng(3), 20, 30)
    tiles = render_area(tmp_path, truth, 0)
    with_manifest = extract_points(tmp_path, tiles)
    (tmp_path / "tiles" / MANIFEST_KEY).unlink()
    images_only = extract_points(tmp_path, tiles)
    assert sorted((r["latitude"], r["longitude"]) for r in images_only) == \
        sorted((r["latitude"], r["longitude"]) for r in with_manifest)


def test_geojson_and_preview_to_s3(s3_env, tmp_path, capsys):
    truth = spaced_points(np.random.default_rng(4), 10, 30)
    tiles = render_area(tmp_path, truth, 0)
    prefix = f"s3://{s3_env.bucket}/{unique_prefix()}"
    assert main(["extract", "--tiles", tiles, "--out", f"{prefix}/points.geojson",
                 "--preview", f"{prefix}/preview.png"]) == 0
    store = open_store(prefix)
    collection = json.loads(store.get_bytes("points.geojson"))
    assert collection["attribution"] == "© OpenStreetMap contributors" and len(collection["features"]) == 10
    lon, lat = collection["features"][0]["geometry"]["coordinates"]  # RFC 7946: lon, lat
    assert AREA.west < lon < AREA.east and AREA.south < lat < AREA.north
    preview_png = store.get_bytes("preview.png")
    preview = decode_png(preview_png)
    assert preview.shape == (3 * 256, 2 * 256, 3)  # the 2 x 3 tiles at their own scale
    assert read_png_text(preview_png)["Copyright"] == "© OpenStreetMap contributors"
    corner = preview[-20:, -200:]
    assert (corner < 100).any()  # the attribution's dark text in the bottom-right corner
    assert np.all(preview == MARKER_RGB, axis=-1).any()  # the a tiles, with their dots


def test_one_run_writes_every_listed_file(tmp_path):
    tiles = render_area(tmp_path, spaced_points(np.random.default_rng(6), 8, 30), 0)
    csv_out, geojson_out = tmp_path / "out" / "points.csv", tmp_path / "out" / "points.geojson"
    summary = extract(ExtractSettings(tiles=tiles, out=[str(csv_out), str(geojson_out)], progress=False))
    with csv_out.open() as file:
        rows = list(csv.DictReader(file))
    features = json.loads(geojson_out.read_text())["features"]
    assert summary["points"] == len(rows) == len(features) == 8
    assert [[float(row["longitude"]), float(row["latitude"])] for row in rows] == \
        [feature["geometry"]["coordinates"] for feature in features]
    assert [{"tile_id": row["tile_id"], "score": float(row["score"]), "city": row["city"]} for row in rows] == \
        [feature["properties"] for feature in features]


def test_the_point_files_keep_their_bytes(tmp_path):
    table = [(60.17123456789, 24.9412345678, "r000c001-ab", 0.9877, "helsinki"), (-33.5, 151.25, "t2", 1.0, "Zürich")]
    write_points(str(tmp_path / "points.csv"), CSV_COLUMNS, table, attribution=OSM_ATTRIBUTION)
    write_points(str(tmp_path / "points.geojson"), CSV_COLUMNS, table, attribution=OSM_ATTRIBUTION)
    assert (tmp_path / "points.csv").read_text() == ("latitude,longitude,tile_id,score,city\n"
                                                     "60.17123456789,24.9412345678,r000c001-ab,0.9877,helsinki\n"
                                                     "-33.5,151.25,t2,1.0,Zürich\n")
    assert (tmp_path / "points.geojson").read_text() == (
        '{"type": "FeatureCollection", "attribution": "© OpenStreetMap contributors", "features": ['
        '{"type": "Feature", "geometry": {"type": "Point", "coordinates": [24.9412345678, 60.17123456789]}, '
        '"properties": {"tile_id": "r000c001-ab", "score": 0.9877, "city": "helsinki"}}, '
        '{"type": "Feature", "geometry": {"type": "Point", "coordinates": [151.25, -33.5]}, '
        '"properties": {"tile_id": "t2", "score": 1.0, "city": "Zürich"}}]}')


def test_the_output_files_are_checked_before_any_work(tmp_path):
    no_tiles = str(tmp_path / "no_tiles")  # reading it would fail too, but only after the outputs were checked
    with pytest.raises(LocgenError, match=r"points.txt: unknown output format; give a path ending in .csv or .geojson"):
        extract(ExtractSettings(tiles=no_tiles, out=[str(tmp_path / "points.csv"), str(tmp_path / "points.txt")]))
    with pytest.raises(LocgenError, match="no output file; give at least one FILE.csv or FILE.geojson"):
        extract(ExtractSettings(tiles=no_tiles, out=[]))
    assert list(tmp_path.iterdir()) == []


def run_failing(capsys, *argv) -> list[str]:
    capsys.readouterr()  # what earlier commands printed
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    return [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("extract")]


def test_bad_inputs_give_one_clear_line(tmp_path, capsys):
    out = str(tmp_path / "points.csv")
    plain = tmp_path / "plain"
    plain.mkdir()
    cv2.imwrite(str(plain / "tile.png"), np.zeros((8, 8, 3), np.uint8))  # no georeference chunk
    assert "no georeference" in run_failing(capsys, "extract", "--tiles", str(plain), "--out", out)[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    errors = run_failing(capsys, "extract", "--tiles", str(empty), "--out", out)
    assert len(errors) == 1 and "no tiles" in errors[0]

    tiles = render_area(tmp_path, spaced_points(np.random.default_rng(5), 5, 30), 0)
    row = read_manifest(open_store(tiles))[0]
    (tmp_path / "tiles" / row["path"]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")
    errors = run_failing(capsys, "extract", "--tiles", tiles, "--out", out)
    assert len(errors) == 1 and "not a readable tile" in errors[0] and row["path"] in errors[0]

    errors = run_failing(capsys, "extract", "--tiles", tiles, "--out", str(tmp_path / "points.txt"))
    assert len(errors) == 1 and "give a path ending in .csv or .geojson" in errors[0]
    assert not (tmp_path / "points.csv").exists()
