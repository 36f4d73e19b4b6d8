"""Location sources: real GBFS snapshots, the HSL station CSV, GeoJSON, OSM tags, and the writers.

Counts are those of the real files (../shared/data, see its README), each checked here against an
independent reading of the same file, so a wrong count in the code or in a README shows up.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import http.server
import json
import socket
import tempfile
import threading
import urllib.parse
from collections import Counter
from pathlib import Path

import jsonschema
import osmium
import pytest
from conftest import HELSINKI_PBF, KOTKA_PBF
from drip_server import DripServer
from hypothesis import given, settings
from hypothesis import strategies as st
from s3server import refusing_port

from components.core import storage
from components.core.errors import LocgenError
from components.core.geo import MAX_LAT
from components.core.provenance import OSM_ATTRIBUTION
from components.sources.locations import FEED_LIMITS, Location, LocationSource, load_locations, write_locations

MARSEILLE = Path("gbfs/marseille-voi-2023-11-03/free_bike_status.json")
CHICAGO = Path("gbfs/chicago-divvy-2025-01-29")
HSL_CSV = Path("hsl/helsinki-espoo-city-bike-stations.csv")
# The files a v1.x/v2.x discovery source reads, in the order its sha256 covers them.
GBFS_READ_ORDER = ("gbfs", "free_bike_status", "station_information", "station_status")


def sha256_of(*paths: Path) -> str:
    """The documented hash: one file's sha256, or the sha256 of the files' hex digests concatenated."""
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def point_feature(lon: float, lat: float, **members) -> dict:
    geometry = {"type": "Point", "coordinates": [lon, lat]}
    return {"type": "Feature", "geometry": geometry, "properties": {}, **members}


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def schema_errors(shared_data: Path, version: str, feed: str, doc) -> list[jsonschema.ValidationError]:
    schema = read_json(shared_data / "gbfs-json-schema" / version / f"{feed}.json")
    return list(jsonschema.Draft7Validator(schema).iter_errors(doc))


# --- small GBFS v1.1 and v3.0 feeds, valid against the official schemas (checked below) ---------

def v1_feeds() -> dict:
    """A GBFS 1.1 system: 3 free bikes (one disabled, one reserved), 3 stations (one without status)."""
    envelope = {"last_updated": 1700000000, "ttl": 0, "version": "1.1"}
    # example.invalid never resolves: the feeds must be read from the files beside gbfs.json.
    urls = [{"name": name, "url": f"https://example.invalid/gbfs/en/{name}.json"}
            for name in ("system_information", "free_bike_status", "station_information", "station_status")]
    bike = {"is_reserved": 0, "is_disabled": 0}
    station = {"num_docks_available": 10, "is_installed": 1, "is_renting": 1, "is_returning": 1,
               "last_reported": 1700000000}
    return {
        "gbfs": {**envelope, "data": {"en": {"feeds": urls}}},
        "free_bike_status": {**envelope, "data": {"bikes": [
            {**bike, "bike_id": "b1", "lat": 60.17, "lon": 24.94},
            {**bike, "bike_id": "b2", "lat": 60.18, "lon": 24.95, "is_disabled": 1},
            {**bike, "bike_id": "b3", "lat": 60.19, "lon": 24.96, "is_reserved": 1}]}},
        "station_information": {**envelope, "data": {"stations": [
            {"station_id": "s1", "name": "Kamppi", "lat": 60.168, "lon": 24.931},
            {"station_id": "s2", "name": "Rautatientori", "lat": 60.171, "lon": 24.943},
            {"station_id": "s3", "name": "Kaivopuisto", "lat": 60.157, "lon": 24.956}]}},
        "station_status": {**envelope, "data": {"stations": [
            {**station, "station_id": "s1", "num_bikes_available": 5},
            {**station, "station_id": "s2", "num_bikes_available": 0}]}},
    }


def v3_feeds() -> dict:
    """A GBFS 3.0 system: 3 vehicles (one docked without lat/lon, one disabled), 1 station."""
    envelope = {"last_updated": "2025-01-29T10:00:00+00:00", "ttl": 0, "version": "3.0"}
    urls = [{"name": name, "url": f"https://example.invalid/gbfs/{name}.json"}
            for name in ("system_information", "vehicle_status", "station_information", "station_status")]
    vehicle = {"is_reserved": False, "is_disabled": False}
    return {
        "gbfs": {**envelope, "data": {"feeds": urls}},
        "vehicle_status": {**envelope, "data": {"vehicles": [
            {**vehicle, "vehicle_id": "v1", "lat": 60.17, "lon": 24.94},
            {**vehicle, "vehicle_id": "v2", "station_id": "s1"},
            {**vehicle, "vehicle_id": "v3", "lat": 60.18, "lon": 24.95, "is_disabled": True}]}},
        "station_information": {**envelope, "data": {"stations": [
            {"station_id": "s1", "name": [{"text": "Kamppi", "language": "en"}],
             "lat": 60.168, "lon": 24.931}]}},
        "station_status": {**envelope, "data": {"stations": [
            {"station_id": "s1", "num_vehicles_available": 2, "is_installed": True, "is_renting": True,
             "is_returning": True, "last_reported": "2025-01-29T09:59:00+00:00"}]}},
    }


def write_feeds(folder: Path, feeds: dict) -> Path:
    """Each feed as <name>.json in `folder`; returns the gbfs.json path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in feeds.items():
        write_json(folder / f"{name}.json", doc)
    return folder / "gbfs.json"


def test_fixture_feeds_match_the_official_schemas(shared_data):
    for version, feeds in (("v1.1", v1_feeds()), ("v3.0", v3_feeds())):
        for name, doc in feeds.items():
            assert schema_errors(shared_data, version, name, doc) == [], (version, name)


def test_gbfs_v1_discovery_reads_the_feeds_beside_it(tmp_path):
    discovery = write_feeds(tmp_path, v1_feeds())
    source = load_locations(str(discovery))
    assert source.kind == "gbfs"
    assert source.uri == str(discovery)
    assert source.points == [
        Location(24.94, 60.17, 1.0, "vehicle", "b1"),
        Location(24.96, 60.19, 1.0, "vehicle", "b3"),  # reserved vehicles are kept by default
        Location(24.931, 60.168, 5.0, "station", "s1"),
        Location(24.943, 60.171, 0.0, "station", "s2"),  # 0 bikes: kept, weight 0
        Location(24.956, 60.157, 0.0, "station", "s3"),  # no status row: weight 0
    ]
    assert source.sha256 == sha256_of(*(tmp_path / f"{name}.json" for name in GBFS_READ_ORDER))


def test_gbfs_vehicle_filters(tmp_path):
    discovery = str(write_feeds(tmp_path, v1_feeds()))

    def vehicles(**options):
        return [p.ref for p in load_locations(discovery, **options).points if p.kind == "vehicle"]
    assert vehicles() == ["b1", "b3"]
    assert vehicles(drop_reserved=True) == ["b1"]
    assert vehicles(drop_disabled=False) == ["b1", "b2", "b3"]
    assert vehicles(drop_disabled=False, drop_reserved=True) == ["b1", "b2"]


def test_gbfs_v3_discovery_skips_docked_vehicles_and_weights_by_vehicles(tmp_path):
    source = load_locations(str(write_feeds(tmp_path, v3_feeds())))
    assert source.points == [
        Location(24.94, 60.17, 1.0, "vehicle", "v1"),  # v2 is docked (station_id, no lat/lon), v3 disabled
        Location(24.931, 60.168, 2.0, "station", "s1"),
    ]
    single = load_locations(str(tmp_path / "vehicle_status.json"), drop_disabled=False)
    assert [p.ref for p in single.points] == ["v1", "v3"]
    assert single.sha256 == sha256_of(tmp_path / "vehicle_status.json")


def test_gbfs_station_information_alone_weighs_one_per_station(tmp_path):
    write_feeds(tmp_path, v1_feeds())
    source = load_locations(f"gbfs:{tmp_path / 'station_information.json'}")
    assert [(p.ref, p.weight) for p in source.points] == [("s1", 1.0), ("s2", 1.0), ("s3", 1.0)]


# --- real GBFS snapshots --------------------------------------------------------------------------

def test_marseille_voi_scooters(shared_data):
    path = shared_data / MARSEILLE
    bikes = read_json(path)["data"]["bikes"]
    assert len(bikes) == 1466
    assert (sum(b["is_disabled"] for b in bikes), sum(b["is_reserved"] for b in bikes)) == (29, 0)

    source = load_locations(str(path))
    assert (source.kind, len(source.points), source.sha256) == ("gbfs", 1437, sha256_of(path))
    first_id = "10a0f7c3-0507-447f-b5c4-c10c88b1081b"
    assert source.points[0] == Location(5.383244, 43.294565, 1.0, "vehicle", first_id)
    assert {(p.kind, p.weight) for p in source.points} == {("vehicle", 1.0)}
    assert len(load_locations(str(path), drop_disabled=False).points) == 1466
    assert len(load_locations(str(path), drop_reserved=True).points) == 1437


def test_chicago_divvy_discovery(shared_data):
    folder = shared_data / CHICAGO
    source = load_locations(str(folder / "gbfs.json"))
    by_kind = Counter(p.kind for p in source.points)
    assert by_kind == {"vehicle": 1244, "station": 1811}
    stations = [p for p in source.points if p.kind == "station"]
    assert sum(p.weight for p in stations) == 4045
    assert sum(p.weight == 0 for p in stations) == 821
    assert source.sha256 == sha256_of(*(folder / f"{name}.json" for name in GBFS_READ_ORDER))
    # The same stations, read on their own, weigh 1 each.
    alone = load_locations(str(folder / "station_information.json"))
    assert [(p.lon, p.lat, p.ref) for p in alone.points] == [(p.lon, p.lat, p.ref) for p in stations]
    assert len(load_locations(str(folder / "free_bike_status.json")).points) == 1244


def test_real_feeds_are_gbfs(shared_data):
    """The parser's real inputs pass the official schemas, except Divvy's 0/1 flags, which it accepts."""
    assert schema_errors(shared_data, "v2.3", "free_bike_status", read_json(shared_data / MARSEILLE)) == []
    folder = shared_data / CHICAGO
    for feed in ("gbfs", "station_information"):
        assert schema_errors(shared_data, "v2.3", feed, read_json(folder / f"{feed}.json")) == []
    # Divvy declares 2.3 but still writes the v1.x 0/1 integers where 2.3 wants booleans:
    # that is its only deviation.
    for feed, flags, count in (("free_bike_status", {"is_reserved", "is_disabled"}, 1244),
                               ("station_status", {"is_installed", "is_renting", "is_returning"}, 1811)):
        errors = schema_errors(shared_data, "v2.3", feed, read_json(folder / f"{feed}.json"))
        assert len(errors) == len(flags) * count
        assert {(e.validator, e.path[-1]) for e in errors} == {("type", flag) for flag in flags}
        assert {e.instance for e in errors} <= {0, 1}


# --- GBFS over HTTP (a server on 127.0.0.1 serving the Chicago snapshot) -------------------------

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves its folder; /to/<URL, quoted> redirects to that URL."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        if not self.path.startswith("/to/"):
            return super().do_GET()
        self.send_response(302)
        self.send_header("Location", urllib.parse.unquote(self.path.removeprefix("/to/")))
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def chicago_server(shared_data, tmp_path):
    """Serves the Chicago files; its gbfs.json points at this server. Yields (base URL, served folder)."""
    served = tmp_path / "served"
    served.mkdir()
    for path in (shared_data / CHICAGO).glob("*.json"):
        (served / path.name).write_bytes(path.read_bytes())
    handler = functools.partial(QuietHandler, directory=served)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    discovery = read_json(served / "gbfs.json")
    for language in discovery["data"].values():
        for feed in language["feeds"]:
            feed["url"] = f"{base}/{feed['url'].rsplit('/', 1)[1]}"
    write_json(served / "gbfs.json", discovery)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base, served
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_feed_redirected_within_http_is_followed(chicago_server):
    base, _ = chicago_server
    moved = load_locations(f"{base}/to/{urllib.parse.quote(base + '/free_bike_status.json', safe='')}")
    assert moved.points == load_locations(f"{base}/free_bike_status.json").points


@pytest.mark.parametrize("target, reason", [
    ("file:///etc/passwd", "HTTP 302 Found - Redirection to url 'file:///etc/passwd' is not allowed"),
    ("ftp://127.0.0.1/free_bike_status.json", "unknown url type: ftp"),
    ("s3://bucket/free_bike_status.json", "HTTP 302 Found - Redirection to url 's3://bucket/free_bike_status.json' "
                                          "is not allowed"),
])
def test_a_feed_redirected_out_of_http_is_refused(chicago_server, target, reason):
    base, _ = chicago_server
    url = f"{base}/to/{urllib.parse.quote(target, safe='')}"
    with pytest.raises(LocgenError) as error:
        load_locations(url)
    assert str(error.value) == (f"{url}: cannot fetch ({reason}); check the URL and the network, or download the "
                                "feed and give the local file")


def test_gbfs_discovery_over_http(chicago_server, shared_data):
    base, served = chicago_server
    local = load_locations(str(shared_data / CHICAGO / "gbfs.json"))
    remote = load_locations(f"{base}/gbfs.json")
    assert remote.uri == f"{base}/gbfs.json"
    assert remote.points == local.points
    assert remote.sha256 == sha256_of(*(served / f"{name}.json" for name in GBFS_READ_ORDER))
    # A local gbfs.json with no feed files beside it fetches its feeds from their URLs.
    alone = served.parent / "alone" / "gbfs.json"
    alone.parent.mkdir()
    alone.write_bytes((served / "gbfs.json").read_bytes())
    assert load_locations(str(alone)).points == local.points


def test_gbfs_http_failures_name_the_url(chicago_server, tmp_path):
    base, served = chicago_server
    with pytest.raises(LocgenError, match=r"cannot fetch \(HTTP 404 ") as excinfo:
        load_locations(f"{base}/no_such_feed.json")
    assert f"{base}/no_such_feed.json" in one_line_error(excinfo)

    discovery = read_json(served / "gbfs.json")
    discovery["data"] = {"en": {"feeds": [{"name": "free_bike_status", "url": f"{base}/gone.json"}]}}
    with pytest.raises(LocgenError, match=f"{base}/gone.json: cannot fetch"):
        load_locations(str(write_json(tmp_path / "gbfs.json", discovery)))

    with refusing_port() as port:  # held while in use: refused on every run, never someone else's server
        with pytest.raises(LocgenError, match=f"http://127.0.0.1:{port}/gbfs.json: cannot fetch .*refused"
                                              ".*check the URL"):
            load_locations(f"http://127.0.0.1:{port}/gbfs.json")

    # Listening but never accepting: the kernel completes the connection and nothing ever answers on it,
    # so the client's timeout is what ends the wait, whatever its length and however slow the machine.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/gbfs.json"
        with pytest.raises(LocgenError, match="cannot fetch \\(timed out\\)"):
            load_locations(url, limits=FEED_LIMITS._replace(stall_s=0.3))


# A feed server that never ends its answer: the size cap or the deadline ends it, whatever the machine's speed.
ENOUGH_TIME = FEED_LIMITS._replace(max_mb=1)  # the size cap ends it long before the deadline could
ENOUGH_ROOM = FEED_LIMITS._replace(deadline_s=0.3)  # a drip brings a few bytes: only the deadline can end it


@pytest.mark.parametrize("mode, limits, says", [
    ("endless", ENOUGH_TIME, "sent more than the 1 MB a download may take; if the answer is that large, raise "
                             "--feed-max-mb"),
    ("announced", ENOUGH_TIME, "announces 1000000.0 MB, more than the 1 MB a download may take; if that is right, "
                               "raise --feed-max-mb"),
    ("drip", ENOUGH_ROOM, "the download was not done after 0.3 s; retry later, or raise --feed-deadline-s"),
    ("drip_headers", ENOUGH_ROOM, "the download was not done after 0.3 s; retry later, or raise --feed-deadline-s"),
])
def test_a_feed_download_is_bounded_in_size_and_in_time(mode, limits, says):
    with DripServer(mode) as server:
        url = f"{server.url}/free_bike_status.json"
        with pytest.raises(LocgenError) as error:
            load_locations(url, limits=limits)
    assert str(error.value) == f"{url}: {says}"


def test_the_feeds_a_discovery_file_names_are_bounded_too(tmp_path):
    with DripServer("endless") as server:
        feed = f"{server.url}/free_bike_status.json"
        discovery = {"data": {"en": {"feeds": [{"name": "free_bike_status", "url": feed}]}}}
        with pytest.raises(LocgenError, match=f"^{feed}: sent more than the 1 MB"):
            load_locations(str(write_json(tmp_path / "gbfs.json", discovery)), limits=ENOUGH_TIME)


# --- malformed GBFS -------------------------------------------------------------------------------

def test_gbfs_invalid_json(tmp_path):
    path = tmp_path / "free_bike_status.json"
    path.write_text('{"data": {"bikes": [')
    with pytest.raises(LocgenError, match="is not valid JSON") as excinfo:
        load_locations(str(path))
    assert one_line_error(excinfo).startswith(f"{path}: ")


def test_gbfs_file_with_no_positions(tmp_path, shared_data):
    path = write_json(tmp_path / "system_information.json", {"data": {"system_id": "x", "name": "X"}})
    with pytest.raises(LocgenError, match="a GBFS file with no positions") as excinfo:
        load_locations(str(path))
    assert one_line_error(excinfo).startswith(f"{path}: ")
    status = shared_data / CHICAGO / "station_status.json"  # stations, but without lat/lon
    with pytest.raises(LocgenError, match=f"{status}: a GBFS file with no positions"):
        load_locations(str(status))
    broken = write_json(tmp_path / "broken.json", {"data": {"bikes": {"b1": {}}}})
    with pytest.raises(LocgenError, match="data.bikes is not a list of objects"):
        load_locations(str(broken))


def test_gbfs_discovery_without_position_feeds(tmp_path):
    feeds = v1_feeds()
    only_system = {"name": "system_information", "url": "https://example.invalid/system_information.json"}
    feeds["gbfs"]["data"]["en"]["feeds"] = [only_system]
    discovery = write_feeds(tmp_path, feeds)
    with pytest.raises(LocgenError, match="names no position feed") as excinfo:
        load_locations(str(discovery))
    assert one_line_error(excinfo).startswith(f"{discovery}: ")


def test_gbfs_bad_positions_name_the_file_and_vehicle(tmp_path):
    feeds = v1_feeds()
    feeds["free_bike_status"]["data"]["bikes"][0]["lat"] = 95.0
    write_feeds(tmp_path, feeds)
    path = tmp_path / "free_bike_status.json"
    with pytest.raises(LocgenError, match=f"{path}: vehicle b1: latitude 95.0 is outside") as excinfo:
        load_locations(str(tmp_path / "gbfs.json"))
    one_line_error(excinfo)
    del feeds["free_bike_status"]["data"]["bikes"][0]["lat"]
    write_feeds(tmp_path, feeds)
    with pytest.raises(LocgenError, match="vehicle b1: longitude/latitude 24.94, None are not numbers"):
        load_locations(str(path))
    feeds = v1_feeds()
    feeds["station_status"]["data"]["stations"][0]["num_bikes_available"] = "five"
    write_feeds(tmp_path, feeds)
    with pytest.raises(LocgenError, match="station s1: vehicles available 'five' is not a count"):
        load_locations(str(tmp_path / "gbfs.json"))


def test_source_without_points_is_an_error(tmp_path):
    feeds = v1_feeds()
    for bike in feeds["free_bike_status"]["data"]["bikes"]:
        bike["is_disabled"] = 1
    path = write_feeds(tmp_path, feeds).with_name("free_bike_status.json")
    with pytest.raises(LocgenError, match="gives no locations; check the source and its filters"):
        load_locations(str(path))
    assert len(load_locations(str(path), drop_disabled=False).points) == 3


# --- CSV ------------------------------------------------------------------------------------------

def test_hsl_city_bike_stations_csv(shared_data):
    path = shared_data / HSL_CSV
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # the BOM this reader must handle
    with path.open(encoding="utf-8-sig", newline="") as file:
        rows = list(csv.DictReader(file))
    source = load_locations(str(path))
    assert (source.kind, len(source.points), source.sha256) == ("csv", 457, sha256_of(path))
    assert source.points[0] == Location(24.840319, 60.16582, 1.0, "point", "2")
    assert source.points[-1] == Location(25.0616678668253, 60.1644074899774, 1.0, "point", "458")
    assert [(p.lon, p.lat) for p in source.points] == [(float(r["x"]), float(r["y"])) for r in rows]


@pytest.mark.parametrize("text, options", [
    ("\ufeffLatitude,Longitude\n60.17,24.94\n", {}),
    ("id;LAT;Lng\n7;60,17;24,94\n", {}),  # semicolons with decimal commas
    ("name\ty\tx\nkamppi\t60.17\t24.94\n", {}),
    ("pos_n,pos_e\r\n60.17,24.94\r\n\r\n", {"lat_column": "POS_N", "lon_column": "pos_e"}),
])
def test_csv_columns_delimiters_and_encodings(tmp_path, text, options):
    path = tmp_path / "points.csv"
    path.write_text(text, encoding="utf-8", newline="")
    assert load_locations(str(path), **options).points == [Location(24.94, 60.17, 1.0, "point", "2")]


def test_csv_prefix_and_tsv_suffix(tmp_path):
    text = "lat\tlon\n60.17\t24.94\n"
    (tmp_path / "points.txt").write_text(text)
    (tmp_path / "points.tsv").write_text(text)
    assert load_locations(f"csv:{tmp_path / 'points.txt'}").kind == "csv"
    assert len(load_locations(str(tmp_path / "points.tsv")).points) == 1


@pytest.mark.parametrize("text, message", [
    ("lat,lon\n60.1,24.9\nabc,24.9\n", r"points.csv, line 3: longitude/latitude '24.9', 'abc' are not"),
    ("lat,lon\n60.1,24.9\n\n60.2\n", r"points.csv, line 4: has 1 fields, the header 2"),
    ("lat,lon\n91,24.9\n", r"points.csv, line 2: latitude 91.0 is outside"),
    ("north,east\n60.1,24.9\n", r"points.csv: no latitude column \(lat or latitude or y\) among north, east; "
                                r"name the columns with --lat-column and --lon-column"),
    ("", r"points.csv: is empty"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "points.csv"
    path.write_text(text)
    with pytest.raises(LocgenError, match=message) as excinfo:
        load_locations(str(path))
    one_line_error(excinfo)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "points.csv"
    path.write_bytes("lat,lon,nimi\n60.1,24.9,Käpylä\n".encode("latin-1"))
    with pytest.raises(LocgenError, match="points.csv: is not UTF-8 text .*save it as UTF-8"):
        load_locations(str(path))


def test_csv_named_column_missing(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("lat,lon\n60.1,24.9\n")
    with pytest.raises(LocgenError, match=r"no latitude column \(pos_n\)"):
        load_locations(str(path), lat_column="pos_n")


# --- GeoJSON --------------------------------------------------------------------------------------

def test_geojson_points_and_multipoints(tmp_path):
    collection = {"type": "FeatureCollection", "features": [
        point_feature(24.94, 60.17, id="a"),
        {"type": "Feature", "properties": None,
         "geometry": {"type": "MultiPoint", "coordinates": [[24.95, 60.18], [24.96, 60.19, 12.0]]}},
        {"type": "Feature", "geometry": None, "properties": {"note": "unlocated"}},
    ]}
    path = write_json(tmp_path / "points.geojson", collection)
    source = load_locations(str(path))
    assert (source.kind, source.sha256) == ("geojson", sha256_of(path))
    assert source.points == [Location(24.94, 60.17, 1.0, "point", "a"),
                             Location(24.95, 60.18, 1.0, "point", "1.0"),
                             Location(24.96, 60.19, 1.0, "point", "1.1")]


def test_geojson_detected_by_content(tmp_path):
    point = write_json(tmp_path / "point.json", {"type": "Point", "coordinates": [24.94, 60.17]})
    assert load_locations(str(point)).points == [Location(24.94, 60.17, 1.0, "point", "0")]
    feature = write_json(tmp_path / "feature.json", point_feature(24.94, 60.17, id=7))
    assert load_locations(str(feature)).points == [Location(24.94, 60.17, 1.0, "point", "7")]


@pytest.mark.parametrize("geometry, message", [
    ({"type": "LineString", "coordinates": [[24.9, 60.1], [24.91, 60.11]]},
     "feature 1: geometry LineString is not a Point"),
    ({"type": "Point", "coordinates": [24.9]}, r"feature 1: position \[24.9\] is not \[longitude, lat"),
    ({"type": "Point", "coordinates": [60.1, 124.9]}, "feature 1: latitude 124.9 is outside"),
])
def test_geojson_errors_name_the_feature(tmp_path, geometry, message):
    path = write_json(tmp_path / "points.geojson", {"type": "FeatureCollection", "features": [
        point_feature(24.94, 60.17), {"type": "Feature", "geometry": geometry, "properties": {}}]})
    with pytest.raises(LocgenError, match=message) as excinfo:
        load_locations(str(path))
    assert one_line_error(excinfo).startswith(f"{path}: feature 1: ")


# --- OSM tags -------------------------------------------------------------------------------------

def independent_osm_points(path: Path, key: str, value: str | None) -> dict[str, tuple[float, float]]:
    """ref -> (lon, lat) of tagged nodes and ways, from a plain pass without pyosmium's location cache.

    Ways: the mean of their distinct located nodes, from a node table built in this same pass (the
    PBF holds nodes before ways).
    """
    node_lonlat, found = {}, {}
    for obj in osmium.FileProcessor(str(path)):
        if obj.is_node():
            node_lonlat[obj.id] = (obj.location.lon, obj.location.lat)
        tagged = key in obj.tags and value in (None, obj.tags[key])
        if tagged and obj.is_node():
            found[f"n{obj.id}"] = node_lonlat[obj.id]
        elif tagged and obj.is_way():
            refs = list(dict.fromkeys(node.ref for node in obj.nodes))
            located = [node_lonlat[ref] for ref in refs if ref in node_lonlat]
            lons, lats = zip(*located)
            found[f"w{obj.id}"] = (sum(lons) / len(lons), sum(lats) / len(lats))
    return found


def test_osm_bicycle_rental_and_parking_in_helsinki():
    rental = load_locations("osm:amenity=bicycle_rental", osm_files=[HELSINKI_PBF])
    parking = load_locations("osm:amenity=bicycle_parking", osm_files=[str(HELSINKI_PBF)])
    assert (rental.kind, rental.sha256) == ("osm-tags", sha256_of(HELSINKI_PBF))
    assert Counter(p.ref[0] for p in rental.points) == {"n": 15}
    assert Counter(p.ref[0] for p in parking.points) == {"n": 33, "w": 20}
    for source, value in ((rental, "bicycle_rental"), (parking, "bicycle_parking")):
        expected = independent_osm_points(HELSINKI_PBF, "amenity", value)
        assert {p.ref for p in source.points} == set(expected)
        for point in source.points:
            assert (point.lon, point.lat) == pytest.approx(expected[point.ref], abs=1e-9)
            assert (point.kind, point.weight) == ("osm", 1.0)
    both = load_locations("osm:amenity=bicycle_rental, amenity=bicycle_parking", osm_files=[HELSINKI_PBF])
    assert len(both.points) == 68
    any_amenity = load_locations("osm:amenity", osm_files=[HELSINKI_PBF])
    assert len(any_amenity.points) == len(independent_osm_points(HELSINKI_PBF, "amenity", None)) == 1089


def test_osm_several_files_hash_in_order():
    source = load_locations("osm:amenity=bicycle_rental", osm_files=[HELSINKI_PBF, KOTKA_PBF])
    assert len(source.points) == 15  # Kotka has none
    assert source.sha256 == sha256_of(HELSINKI_PBF, KOTKA_PBF)


OSM_XML = """<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6" generator="locgen tests">
  <node id="1" version="1" lat="60.000" lon="24.000"/>
  <node id="2" version="1" lat="60.000" lon="24.002"/>
  <node id="3" version="1" lat="60.002" lon="24.002"/>
  <node id="4" version="1" lat="60.002" lon="24.000"/>
  <node id="5" version="1" lat="60.100" lon="24.100"><tag k="amenity" v="bicycle_rental"/></node>
  <way id="10" version="1"><nd ref="1"/><nd ref="2"/><nd ref="3"/><nd ref="4"/><nd ref="1"/>
    <tag k="amenity" v="bicycle_parking"/></way>
  <way id="11" version="1"><nd ref="98"/><nd ref="99"/><tag k="amenity" v="bicycle_parking"/></way>
  <way id="12" version="1"><nd ref="1"/><nd ref="3"/><tag k="shop" v="bicycle"/></way>
  <relation id="20" version="1"><member type="way" ref="10" role="outer"/>
    <tag k="amenity" v="bicycle_parking"/></relation>
</osm>
"""


@pytest.mark.parametrize("name", ["small.osm", "small.osm.bz2"])
def test_osm_ways_use_the_mean_of_distinct_nodes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bz2.compress(OSM_XML.encode()) if name.endswith(".bz2") else OSM_XML.encode())
    source = load_locations("osm:amenity=bicycle_parking,shop,amenity=bicycle_rental", osm_files=[path])
    # w10: a closed square, the mean of its 4 corners (not 5); w11: no node in the file;
    # r20: relations are not read
    assert [p.ref for p in source.points] == ["n5", "w10", "w12"]
    assert (source.points[1].lon, source.points[1].lat) == pytest.approx((24.001, 60.001), abs=1e-9)
    assert (source.points[2].lon, source.points[2].lat) == pytest.approx((24.001, 60.001), abs=1e-9)


def test_osm_errors(tmp_path):
    with pytest.raises(LocgenError, match="pass --osm FILE") as excinfo:
        load_locations("osm:amenity=bicycle_rental")
    one_line_error(excinfo)
    with pytest.raises(LocgenError, match="'=bicycle_rental' is not KEY or KEY=VALUE"):
        load_locations("osm:=bicycle_rental", osm_files=[HELSINKI_PBF])
    with pytest.raises(LocgenError, match="'amenity=' is not KEY or KEY=VALUE"):
        load_locations("osm:amenity=", osm_files=[HELSINKI_PBF])
    with pytest.raises(LocgenError, match="no such OSM file; check the --osm path"):
        load_locations("osm:amenity", osm_files=[tmp_path / "missing.osm.pbf"])
    truncated = tmp_path / "truncated.osm.pbf"
    truncated.write_bytes(HELSINKI_PBF.read_bytes()[:20000])
    with pytest.raises(LocgenError, match=f"{truncated}: cannot read OSM data .*re-download") as excinfo:
        load_locations("osm:amenity", osm_files=[truncated])
    one_line_error(excinfo)
    with pytest.raises(LocgenError, match="osm:amenity=bicycle_rentl: gives no locations"):
        load_locations("osm:amenity=bicycle_rentl", osm_files=[HELSINKI_PBF])


# --- detection --------------------------------------------------------------------------------------

def test_unknown_and_missing_sources(tmp_path):
    unknown = write_json(tmp_path / "things.json", {"things": [1, 2]})
    with pytest.raises(LocgenError, match="is not a location source I know; give a GBFS") as excinfo:
        load_locations(str(unknown))
    assert "osm:KEY[=VALUE]" in one_line_error(excinfo)
    with pytest.raises(LocgenError, match="missing.csv: no such file; check the path"):
        load_locations(str(tmp_path / "missing.csv"))
    collection = write_json(tmp_path / "points.json", {"type": "FeatureCollection", "features": []})
    with pytest.raises(LocgenError, match="points.json: a GBFS file with no positions"):
        load_locations(f"gbfs:{collection}")
    with pytest.raises(LocgenError, match="things.json: is not GeoJSON"):
        load_locations(f"geojson:{unknown}")
    (tmp_path / "stations.txt").write_text("lat,lon\n60.1,24.9\n")
    with pytest.raises(LocgenError, match="stations.txt: is not valid JSON .*csv: prefix"):
        load_locations(str(tmp_path / "stations.txt"))


# --- writing ----------------------------------------------------------------------------------------

def test_write_csv_with_provenance_round_trips(shared_data, tmp_path):
    stations = load_locations(str(shared_data / HSL_CSV))
    divvy = load_locations(str(shared_data / CHICAGO / "gbfs.json"))
    out = tmp_path / "out" / "locations.csv"
    write_locations([stations, divvy], out)
    with out.open(newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["latitude", "longitude", "weight", "kind", "ref", "source", "source_sha256"]
    assert rows[1] == ["60.16582", "24.840319", "1.0", "point", "2", stations.uri, stations.sha256]
    assert len(rows) == 1 + 457 + 3055
    assert sum(float(row[2]) for row in rows[1:]) == 457 + 1244 + 4045
    back = load_locations(str(out))
    assert [(p.lon, p.lat) for p in back.points] == [(p.lon, p.lat) for p in stations.points + divvy.points]
    assert [p.name for p in tmp_path.joinpath("out").iterdir()] == ["locations.csv"]


def test_write_geojson(shared_data, tmp_path):
    source = load_locations(str(shared_data / MARSEILLE))
    out = tmp_path / "locations.geojson"
    write_locations([source], out)
    collection = read_json(out)
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 1437
    assert collection["features"][0] == {
        "type": "Feature", "geometry": {"type": "Point", "coordinates": [5.383244, 43.294565]},
        "properties": {"weight": 1.0, "kind": "vehicle", "ref": "10a0f7c3-0507-447f-b5c4-c10c88b1081b",
                       "source": source.uri, "source_sha256": source.sha256}}
    back = load_locations(str(out))
    for written, read in zip(source.points, back.points, strict=True):
        assert (read.lon, read.lat) == pytest.approx((written.lon, written.lat), abs=5e-8)


def test_write_geojson_keeps_the_osm_attribution_of_osm_points(tmp_path):
    point = Location(24.9412345678, 60.1712345678, 1.0, "osm", "n1")
    write_locations([LocationSource("osm:amenity=bicycle_rental", "osm-tags", "0" * 64, [point])],
                    tmp_path / "osm.geojson")
    write_locations([LocationSource("points.csv", "csv", "0" * 64, [point])], tmp_path / "csv.geojson")
    assert read_json(tmp_path / "osm.geojson")["attribution"] == OSM_ATTRIBUTION
    assert read_json(tmp_path / "osm.geojson")["features"][0]["geometry"]["coordinates"] == [24.9412346, 60.1712346]
    assert "attribution" not in read_json(tmp_path / "csv.geojson")


def test_write_unknown_suffix_and_failed_write(tmp_path, monkeypatch):
    source = LocationSource("x", "csv", "0" * 64, [Location(24.94, 60.17, 1.0, "point", "2")])
    with pytest.raises(LocgenError, match=r"locations.txt: unknown output format; give .* .csv or .geojson"):
        write_locations([source], tmp_path / "locations.txt")
    out = tmp_path / "locations.csv"
    out.write_text("previous\n")

    def fail(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(storage.os, "replace", fail)
    with pytest.raises(LocgenError, match="disk full"):
        write_locations([source], out)
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["locations.csv"]  # no temporary file left behind


latitudes = st.floats(min_value=-MAX_LAT, max_value=MAX_LAT, allow_nan=False)
longitudes = st.floats(min_value=-180, max_value=180, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(longitudes, latitudes), min_size=1, max_size=20))
def test_csv_round_trip_is_exact(lonlats):
    points = [Location(lon, lat, 1.0, "point", str(i)) for i, (lon, lat) in enumerate(lonlats)]
    source = LocationSource("generated", "csv", "0" * 64, points)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "points.csv"
        write_locations([source], out)
        assert [(p.lon, p.lat) for p in load_locations(str(out)).points] == lonlats


# --- what a feed may make locgen read -----------------------------------------------------------

@pytest.mark.parametrize("feed_url", ["s3://locgen/secret/free_bike_status.json", "file:///etc/passwd"])
def test_a_remote_discovery_file_names_http_feeds_only(tmp_path, feed_url):
    feeds = v1_feeds()
    feeds["gbfs"]["data"]["en"]["feeds"] = [{"name": "free_bike_status", "url": feed_url}]
    served = write_feeds(tmp_path / "served", {"gbfs": feeds["gbfs"]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler,
                                                                                 directory=served.parent))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    discovery = f"http://127.0.0.1:{server.server_address[1]}/gbfs.json"
    try:
        with pytest.raises(LocgenError) as excinfo:
            load_locations(discovery)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert one_line_error(excinfo) == (
        f"{discovery}: names the feed {feed_url!r}, which is not an http(s) URL; a discovery file's feeds are read "
        "over http(s) only (or from a file of that name beside a local gbfs.json): give the feed itself as a source")


def test_a_local_discovery_file_reads_no_other_local_file_it_names(tmp_path):
    elsewhere = write_feeds(tmp_path / "elsewhere", v1_feeds()).parent / "free_bike_status.json"
    feeds = v1_feeds()
    feeds["gbfs"]["data"]["en"]["feeds"] = [{"name": "free_bike_status", "url": str(tmp_path / "x" / "bikes.json")}]
    discovery = write_feeds(tmp_path / "here", {"gbfs": feeds["gbfs"]})
    assert elsewhere.is_file()
    with pytest.raises(LocgenError, match=r"names the feed '.*/x/bikes.json', which is not an http\(s\) URL"):
        load_locations(str(discovery))


@pytest.mark.parametrize("lat, lon", [(True, 24.94), (60.17, False)])
def test_a_boolean_is_no_coordinate(tmp_path, lat, lon):
    feeds = v1_feeds()
    feeds["free_bike_status"]["data"]["bikes"][0].update(lat=lat, lon=lon)
    write_feeds(tmp_path, feeds)
    with pytest.raises(LocgenError) as excinfo:
        load_locations(str(tmp_path / "gbfs.json"))
    assert one_line_error(excinfo) == (f"{tmp_path / 'free_bike_status.json'}: vehicle b1: longitude/latitude "
                                       f"{lon!r}, {lat!r} are not numbers; fix or remove it")


def test_json_nested_beyond_reading_is_one_line(tmp_path):
    path = tmp_path / "deep.geojson"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LocgenError) as excinfo:
        load_locations(str(path))
    assert one_line_error(excinfo) == (f"{path}: JSON nested deeper than Python reads; no location source is, so "
                                       "give the real feed or file")


# --- random input: a reader takes it or refuses it in one line, never with a traceback ------------------------

# JSON shaped like the documents the readers look into, with any value where they expect numbers or objects.
_KEYS = st.sampled_from(["data", "bikes", "vehicles", "stations", "en", "feeds", "name", "url", "lat", "lon",
                         "station_id", "num_bikes_available", "is_disabled", "type", "features", "geometry",
                         "coordinates", "properties", "last_updated"])
_JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
                     max_leaves=30)


def _read_or_refuse(name: str, raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(raw)
        try:
            load_locations(str(path))
        except LocgenError as error:
            assert "\n" not in str(error) and str(path) in str(error)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["feed.json", "points.csv", "points.geojson", "points.tsv"]),
       st.binary(max_size=600) | st.text(alphabet='lat,lon;\t\n"0123456789.-e', max_size=200).map(str.encode))
def test_random_bytes_as_a_location_file_are_taken_or_refused_in_one_line(name, raw):
    _read_or_refuse(name, raw)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["free_bike_status.json", "station_information.json", "points.geojson"]), _JSON)
def test_random_json_as_a_feed_or_geojson_is_taken_or_refused_in_one_line(name, doc):
    _read_or_refuse(name, json.dumps(doc).encode())
