"""Location sources -> points with their provenance.

Every source a user can give (GBFS feeds, CSV, GeoJSON, OSM tags) becomes a `LocationSource`: the
points (lon/lat in degrees, WGS84) with a weight, a kind and the id each point has in its source,
plus the source's URI as given and the sha256 of the bytes read, so every tile set can name its
inputs exactly.

Sources (`spec`), detected by prefix (`gbfs:`, `csv:`, `geojson:`, `osm:`), else by suffix (.csv,
.tsv, .geojson), else by JSON content (a GBFS file has a `data` object, GeoJSON has a `type`):
- GBFS, a file or an http(s) URL: an auto-discovery gbfs.json (v1.x/v2.x `data.<language>.feeds`,
  the first language listed, since positions do not depend on language; v3.0 `data.feeds`) or one
  feed: free_bike_status (v1/v2 `data.bikes`), vehicle_status (v3.0 `data.vehicles`) or
  station_information. Vehicles have weight 1; a vehicle without lat/lon (a v3.0 vehicle docked
  at a station) is skipped. Stations are weighted by station_status `num_bikes_available` (v3.0
  `num_vehicles_available`) when the discovery file names station_status: a station with no
  status row gets weight 0 (nothing is reported available there), a station with 0 bikes is kept
  with weight 0 (the renderer decides). A station_information file given alone has weight 1 per
  station: give gbfs.json to get the availability weights. Feed URLs of a local gbfs.json are
  read from the file of the same name beside it when there is one (captured snapshots).
- CSV: UTF-8 (a BOM is fine), delimiter `,` `;` or tab (the most frequent in the header line; with
  `;` or tab a decimal comma is accepted), lat/lon columns by their usual names or named by the
  caller. A point's ref is its line number in the file.
- GeoJSON (RFC 7946, lon/lat order): FeatureCollection, Feature, Point, MultiPoint. Other
  geometries are rejected, not reduced to a centroid: the centroid of a line or an area is not a
  place where a vehicle stands, so converting them is left to the user, deliberately. A feature
  with a null geometry is unlocated (RFC 7946 §3.2) and gives no point.
- OSM tags: `osm:KEY=VALUE[,KEY=VALUE...]` or `osm:KEY` (any value), read from the `osm_files`.
  Nodes give their location; ways the mean of their located nodes (a closed way's repeated last
  node counted once; a way cut by the extract's edge uses the nodes inside it). Relations are not
  read.

A source that gives no point at all is an error: nothing downstream can use it, and it is nearly
always a wrong tag, column or filter.

sha256: of the bytes read; when several files are read (a discovery file and its feeds, several
OSM files) it is the sha256 of the concatenated hex digests in reading order: for GBFS the
discovery file, then the vehicle feed, station_information, station_status.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import osmium

from components.core.errors import LocgenError, one_line
from components.core.geo import check_lonlat
from components.core.points import write_points
from components.core.provenance import OSM_ATTRIBUTION, file_sha256
from components.core.settings import Within, setting
from components.core.storage import open_file_uri
from components.sources.web import REQUEST_ERRORS, DownloadLimits, download, failure_reason

PREFIXES = ("gbfs", "csv", "geojson", "osm")
ACCEPTED_FORMS = ("a GBFS gbfs.json or feed (file or http(s) URL), a .csv with lat/lon columns, a .geojson, "
                  "or osm:KEY[=VALUE][,...] with --osm FILE "
                  "(prefixes gbfs:, csv:, geojson:, osm: force the kind)")
LAT_NAMES = ("lat", "latitude", "y")
LON_NAMES = ("lon", "lng", "long", "longitude", "x")
CSV_DELIMITERS = ",;\t"  # on a tie (none in the header) the first, the comma, wins
CSV_COLUMNS = ("latitude", "longitude", "weight", "kind", "ref", "source", "source_sha256")
GEOJSON_TYPES = {"FeatureCollection", "Feature", "Point", "MultiPoint", "LineString", "MultiLineString",
                 "Polygon", "MultiPolygon", "GeometryCollection"}
VEHICLE_FEEDS = ("free_bike_status", "vehicle_status")  # GBFS v1.x/v2.x name, v3.0 name
# Bounds of one feed download. The largest real position files in ../shared/data are 2.2 MB (London's
# BikePoint, 795 stations) and 0.8 MB (Marseille's Voi free_bike_status): 64 MB leaves 30 times that, and
# 120 s fetches it at 0.5 MB/s; a feed server that says nothing for 30 s is taken as down.
FEED_LIMITS = DownloadLimits(max_mb=64, deadline_s=120, stall_s=30, options=("--feed-max-mb", "--feed-deadline-s"))
NO_GBFS_POSITIONS = ("a GBFS file with no positions (no data.bikes, data.vehicles or stations with lat/lon); "
                     "give gbfs.json, free_bike_status.json, vehicle_status.json or station_information.json")


class Location(NamedTuple):
    """One point and where it came from."""

    lon: float
    lat: float
    weight: float  # 1 for a vehicle or point; a GBFS station: its available vehicles (when known)
    kind: str  # "vehicle", "station", "point" (CSV/GeoJSON) or "osm"
    ref: str  # its id in the source: bike_id, vehicle_id, station_id, CSV line, OSM n123/w456


class LocationSource(NamedTuple):
    """The points of one source, with the source as the user gave it and the hash of what was read."""

    uri: str
    kind: str  # "gbfs", "csv", "geojson" or "osm-tags"
    sha256: str
    points: list[Location]


def feed_max_mb_setting():
    """The `feed_max_mb` setting of every stage that reads location sources."""
    return setting(FEED_LIMITS.max_mb, help="the most megabytes one http(s) location feed may send (%(default)s)",
                   metavar="MB", within=Within(0, above=True), output=False)


def feed_deadline_s_setting():
    """The `feed_deadline_s` setting of every stage that reads location sources."""
    return setting(FEED_LIMITS.deadline_s, help="seconds one http(s) location feed may take in all (%(default)s)",
                   metavar="SECONDS", within=Within(0, above=True), output=False)


def feed_limits(settings) -> DownloadLimits:
    """The feed bounds of settings made with feed_max_mb_setting and feed_deadline_s_setting."""
    return FEED_LIMITS._replace(max_mb=settings.feed_max_mb, deadline_s=settings.feed_deadline_s)


def load_locations(spec: str, *, osm_files: Sequence[str | Path] = (), drop_disabled: bool = True,
                   drop_reserved: bool = False, lat_column: str | None = None, lon_column: str | None = None,
                   limits: DownloadLimits = FEED_LIMITS, allow_empty: bool = False) -> LocationSource:
    """Read one location source (see the module docstring for the accepted forms).

    `limits` bound each http(s) download; `allow_empty` accepts a source with no point (a model's output may
    rightly hold none).
    """
    kind, target = split_spec(spec)
    if kind == "osm":
        points, sha256 = _osm_points(spec, _parse_osm_terms(spec, target), osm_files)
        kind = "osm-tags"
    else:
        raw = _read_bytes(target, limits)
        sha256 = hashlib.sha256(raw).hexdigest()
        kind = kind or _kind_from_suffix(target)
        if kind == "csv":
            points = _csv_points(target, raw, lat_column, lon_column)
        else:
            doc = _parse_json(raw, target)
            kind = kind or _kind_from_json(doc, target)
            if kind == "geojson":
                points = _geojson_points(target, doc)
            else:
                points, sha256 = _gbfs_points(target, doc, sha256, limits, drop_disabled, drop_reserved)
    if not points and not allow_empty:
        raise LocgenError(f"{spec}: gives no locations; check the source and its filters "
                          "(OSM tag and --osm area, CSV rows, disabled/reserved vehicles)")
    return LocationSource(spec, kind, sha256, points)


def write_locations(sources: Sequence[LocationSource], out_uri: str | Path) -> None:
    """Write the points of all sources to a .csv or .geojson file (local or s3://), all at once or not at all.

    The CSV keeps every coordinate in full (repr round-trips exactly), the GeoJSON 7 decimals of a
    degree (about 1 cm); points taken from OSM keep its attribution (ODbL).
    """
    rows = [(point.lat, point.lon, point.weight, point.kind, point.ref, source.uri, source.sha256)
            for source in sources for point in source.points]
    osm = any(source.kind == "osm-tags" for source in sources)
    write_points(str(out_uri), CSV_COLUMNS, rows, attribution=OSM_ATTRIBUTION if osm else None, decimals=7)


# --- reading bytes, JSON and hashes -------------------------------------------------------------

def split_spec(spec: str) -> tuple[str | None, str]:
    """('gbfs'|'csv'|'geojson'|'osm', rest) for a prefixed spec, else (None, spec)."""
    prefix, colon, rest = spec.partition(":")
    if colon and prefix.lower() in PREFIXES:
        return prefix.lower(), rest
    return None, spec


def _is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in ("http", "https")


def _read_bytes(location: str, limits: DownloadLimits) -> bytes:
    """The bytes of a local file, an s3:// object or an http(s) URL (this one within `limits`)."""
    if _is_url(location):
        return _fetch(location, limits)
    if location.startswith("s3://"):
        store, key = open_file_uri(location)
        return store.get_bytes(key)
    path = Path(location)
    if not path.is_file():
        raise LocgenError(f"{location}: no such file; check the path, or give {ACCEPTED_FORMS}")
    return path.read_bytes()


def _fetch(url: str, limits: DownloadLimits) -> bytes:
    """GET an http(s) URL with the standard library, within `limits`."""
    body = bytearray()
    try:
        download(url, url, limits, body.extend)
        return bytes(body)
    except REQUEST_ERRORS as exc:
        raise LocgenError(f"{url}: cannot fetch ({failure_reason(exc)}); check the URL and the network, "
                          "or download the feed and give the local file") from None


def _parse_json(raw: bytes, name: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise LocgenError(f"{name}: is not valid JSON ({exc}); re-download or fix the file "
                          "(a CSV source needs the .csv suffix or the csv: prefix)") from None
    except RecursionError:
        raise LocgenError(f"{name}: JSON nested deeper than Python reads; no location source is, so give the "
                          "real feed or file") from None


def _combined_sha256(digests: Sequence[str]) -> str:
    """One file: its sha256; several: the sha256 of their hex digests concatenated in reading order."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode("ascii")).hexdigest()


def _kind_from_suffix(target: str) -> str | None:
    suffix = Path(urllib.parse.urlparse(target).path).suffix.lower()
    return {".csv": "csv", ".tsv": "csv", ".geojson": "geojson"}.get(suffix)


def _kind_from_json(doc: Any, name: str) -> str:
    """'gbfs' for a GBFS envelope (a `data` object), 'geojson' for a GeoJSON object."""
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        return "gbfs"
    if _geojson_type(doc) in GEOJSON_TYPES:
        return "geojson"
    raise LocgenError(f"{name}: is not a location source I know; give {ACCEPTED_FORMS}")


def _location(lon_raw: Any, lat_raw: Any, weight: float, kind: str, ref: str, what: str) -> Location:
    """A checked Location; `what` names the record in errors (file and record)."""
    if isinstance(lon_raw, bool) or isinstance(lat_raw, bool):  # float(True) is 1.0: a position off Africa
        raise LocgenError(f"{what}: longitude/latitude {lon_raw!r}, {lat_raw!r} are not numbers; fix or remove it")
    try:
        lon, lat = float(lon_raw), float(lat_raw)
    except (TypeError, ValueError):
        raise LocgenError(f"{what}: longitude/latitude {lon_raw!r}, {lat_raw!r} are not numbers; "
                          "fix or remove it") from None
    check_lonlat(lon, lat, what)
    return Location(lon, lat, weight, kind, ref)


# --- GBFS ---------------------------------------------------------------------------------------

def _gbfs_points(name: str, doc: Any, sha256: str, limits: DownloadLimits, drop_disabled: bool,
                 drop_reserved: bool) -> tuple[list[Location], str]:
    """Points of a discovery file (reading its position feeds) or of one position feed."""
    data = _feed_data(doc, name)
    feeds = _discovery_feeds(data)
    if feeds is None:
        if "bikes" in data or "vehicles" in data:
            return _vehicle_points(name, data, drop_disabled, drop_reserved), sha256
        if _has_station_positions(data):
            return _station_points(name, data, None), sha256
        raise LocgenError(f"{name}: {NO_GBFS_POSITIONS}")
    vehicle_feed = next((feed for feed in VEHICLE_FEEDS if feed in feeds), None)
    wanted = [feed for feed in (vehicle_feed, "station_information") if feed in feeds]
    if not wanted:
        raise LocgenError(f"{name}: the discovery file names no position feed (free_bike_status, "
                          "vehicle_status or station_information); "
                          "give the gbfs.json of a system that publishes positions")
    if "station_information" in feeds and "station_status" in feeds:
        wanted.append("station_status")
    digests, read = [sha256], {}  # read: feed name -> (where it was read, its data)
    for feed in wanted:
        location = _feed_location(name, feeds[feed])
        raw = _read_bytes(location, limits)
        digests.append(hashlib.sha256(raw).hexdigest())
        read[feed] = location, _feed_data(_parse_json(raw, location), location)
    points = []
    if vehicle_feed:
        points += _vehicle_points(*read[vehicle_feed], drop_disabled, drop_reserved)
    if "station_information" in read:
        status = read.get("station_status", (None, None))[1]
        points += _station_points(*read["station_information"], status)
    return points, _combined_sha256(digests)


def _discovery_feeds(data: dict) -> dict[str, str] | None:
    """Feed name -> URL of a gbfs.json `data` (v3.0 `feeds`; v1.x/v2.x `<language>.feeds`), or None."""
    if isinstance(data.get("feeds"), list):
        listed = data["feeds"]
    else:
        languages = [value for value in data.values()
                     if isinstance(value, dict) and isinstance(value.get("feeds"), list)]
        if not languages:
            return None
        listed = languages[0]["feeds"]
    return {feed["name"]: feed["url"] for feed in listed
            if isinstance(feed, dict) and "name" in feed and "url" in feed}


def _feed_location(discovery: str, feed_url: str) -> str:
    """Where to read a feed: beside a local gbfs.json when a file of that name is there, else its http(s) URL.
    Never an s3:// object or a local path that the discovery file names: a feed publisher's file would
    otherwise have locgen read the user's object store with the user's keys, or the user's files."""
    if _is_url(discovery):
        location = urllib.parse.urljoin(discovery, feed_url)
    else:
        beside = Path(discovery).parent / Path(urllib.parse.urlparse(feed_url).path).name
        if beside.is_file():
            return str(beside)
        location = feed_url
    if not _is_url(location):
        raise LocgenError(f"{discovery}: names the feed {feed_url!r}, which is not an http(s) URL; a discovery "
                          "file's feeds are read over http(s) only (or from a file of that name beside a local "
                          "gbfs.json): give the feed itself as a source")
    return location


def _feed_data(doc: Any, name: str) -> dict:
    if not (isinstance(doc, dict) and isinstance(doc.get("data"), dict)):
        raise LocgenError(f"{name}: {NO_GBFS_POSITIONS}")
    return doc["data"]


def _records(data: dict, key: str, name: str) -> list[dict]:
    """data[key] as a list of objects, or one clear error."""
    records = data.get(key)
    if not (isinstance(records, list) and all(isinstance(record, dict) for record in records)):
        raise LocgenError(f"{name}: data.{key} is not a list of objects; re-download the feed "
                          f"({NO_GBFS_POSITIONS})")
    return records


def _flag(value: Any) -> bool:
    # GBFS v1.x encodes flags as 0/1, v2.x and later as booleans; real 2.3 feeds (Divvy) still send 0/1.
    return value is True or value == 1


def _vehicle_points(name: str, data: dict, drop_disabled: bool, drop_reserved: bool) -> list[Location]:
    """Free-floating vehicles of free_bike_status (`bikes`) or vehicle_status (`vehicles`)."""
    key, id_key = ("vehicles", "vehicle_id") if "vehicles" in data else ("bikes", "bike_id")
    points = []
    for index, vehicle in enumerate(_records(data, key, name)):
        if drop_disabled and _flag(vehicle.get("is_disabled")):
            continue
        if drop_reserved and _flag(vehicle.get("is_reserved")):
            continue
        if vehicle.get("lat") is None and vehicle.get("lon") is None:  # v3.0: docked, located by station_id
            continue
        ref = str(vehicle.get(id_key, index))
        what = f"{name}: vehicle {ref}"
        points.append(_location(vehicle.get("lon"), vehicle.get("lat"), 1.0, "vehicle", ref, what))
    return points


def _has_station_positions(data: dict) -> bool:
    """Whether `data` is station_information (stations with lat/lon) rather than station_status."""
    stations = data.get("stations")
    return isinstance(stations, list) and any(isinstance(s, dict) and "lat" in s for s in stations)


def _station_points(name: str, info: dict, status: dict | None) -> list[Location]:
    """Stations, weighted by the vehicles available in `status` when it is given (else 1 each)."""
    available = {}
    if status is not None:
        for row in _records(status, "stations", name):
            # v1.x/v2.x count bikes, v3.0 counts vehicles
            count = row.get("num_vehicles_available", row.get("num_bikes_available"))
            available[str(row.get("station_id"))] = count
    points = []
    for index, station in enumerate(_records(info, "stations", name)):
        ref = str(station.get("station_id", index))
        what = f"{name}: station {ref}"
        weight = 1.0 if status is None else _count(available.get(ref, 0), what)
        points.append(_location(station.get("lon"), station.get("lat"), weight, "station", ref, what))
    return points


def _count(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise LocgenError(f"{what}: vehicles available {value!r} is not a count; re-download station_status")
    return float(value)


# --- CSV ----------------------------------------------------------------------------------------

def _csv_points(name: str, raw: bytes, lat_column: str | None, lon_column: str | None) -> list[Location]:
    """One point per non-empty row; its ref is the row's line number."""
    try:
        text = raw.decode("utf-8-sig")  # spreadsheet exports often start with a BOM
    except UnicodeDecodeError as exc:
        raise LocgenError(f"{name}: is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "save it as UTF-8") from None
    header_line = text.partition("\n")[0]
    delimiter = max(CSV_DELIMITERS, key=header_line.count)
    # With ';' or tab between fields, European exports write decimal commas: 60,17.
    decimal_comma = delimiter != ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise LocgenError(f"{name}: is empty; give a CSV with a header row and lat/lon columns")
        columns = [column.strip().lower() for column in header]
        lat_index = _column_index(name, header, columns, lat_column, LAT_NAMES, "latitude")
        lon_index = _column_index(name, header, columns, lon_column, LON_NAMES, "longitude")
        points = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            what = f"{name}, line {reader.line_num}"
            if len(row) <= max(lat_index, lon_index):
                raise LocgenError(f"{what}: has {len(row)} fields, the header {len(header)}; "
                                  "fix or remove the row")
            lat_text, lon_text = row[lat_index].strip(), row[lon_index].strip()
            if decimal_comma:
                lat_text, lon_text = lat_text.replace(",", "."), lon_text.replace(",", ".")
            points.append(_location(lon_text, lat_text, 1.0, "point", str(reader.line_num), what))
    except csv.Error as exc:
        raise LocgenError(f"{name}, line {reader.line_num}: {exc}; fix the quoting of that row") from None
    return points


def _column_index(name: str, header: list[str], columns: list[str], given: str | None, usual: tuple[str, ...],
                  what: str) -> int:
    """Index of the column named `given` (any case), else of the first usual name present."""
    wanted = (given.strip().lower(),) if given else usual
    for column in wanted:
        if column in columns:
            return columns.index(column)
    raise LocgenError(f"{name}: no {what} column ({' or '.join(wanted)}) among {one_line(', '.join(header))}; "
                      "name the columns with --lat-column and --lon-column")


# --- GeoJSON ------------------------------------------------------------------------------------

def _geojson_points(name: str, doc: Any) -> list[Location]:
    """Points of a FeatureCollection, a Feature or a bare Point/MultiPoint geometry."""
    if _geojson_type(doc) not in GEOJSON_TYPES:
        raise LocgenError(f"{name}: is not GeoJSON (no FeatureCollection, Feature or geometry type); "
                          "give an RFC 7946 file")
    if doc["type"] == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise LocgenError(f"{name}: the FeatureCollection has no features list; fix the file")
    elif doc["type"] == "Feature":
        features = [doc]
    else:
        features = [{"type": "Feature", "geometry": doc}]
    points = []
    for index, feature in enumerate(features):
        if not isinstance(feature, dict) or "geometry" not in feature:
            raise LocgenError(f"{name}: feature {index} is not a GeoJSON Feature; fix the file")
        ref = str(feature.get("id", index))
        points += _geometry_points(f"{name}: feature {index}", ref, feature["geometry"])
    return points


def _geojson_type(doc: Any) -> str | None:
    """The `type` of a JSON object, when it is a text."""
    kind = doc.get("type") if isinstance(doc, dict) else None
    return kind if isinstance(kind, str) else None


def _geometry_points(what: str, ref: str, geometry: Any) -> list[Location]:
    """The positions of a Point or MultiPoint; refs of MultiPoint members are 'ref.k'."""
    if geometry is None:  # an unlocated feature (RFC 7946 §3.2)
        return []
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    coordinates = geometry.get("coordinates") if isinstance(geometry, dict) else None
    if kind == "Point":
        positions = {ref: coordinates}
    elif kind == "MultiPoint" and isinstance(coordinates, list):
        positions = {f"{ref}.{k}": position for k, position in enumerate(coordinates)}
    else:
        raise LocgenError(f"{what}: geometry {kind} is not a Point or MultiPoint; give point features "
                          "(a vehicle stands at a point: convert lines and areas to points yourself)")
    points = []
    for member_ref, position in positions.items():
        if not (isinstance(position, list) and len(position) >= 2):
            raise LocgenError(f"{what}: position {position!r} is not [longitude, latitude]; "
                              "fix the coordinates")
        points.append(_location(position[0], position[1], 1.0, "point", member_ref, what))
    return points


# --- OSM tags -----------------------------------------------------------------------------------

def _parse_osm_terms(spec: str, text: str) -> list[tuple[str, str | None]]:
    """'amenity=bicycle_rental,shop' -> [('amenity', 'bicycle_rental'), ('shop', None)] (None: any value)."""
    terms = []
    for term in text.split(","):
        key, equals, value = (part.strip() for part in term.partition("="))
        if not key or (equals and not value):
            raise LocgenError(f"{spec}: '{term}' is not KEY or KEY=VALUE; "
                              "write e.g. osm:amenity=bicycle_rental,amenity=bicycle_parking")
        terms.append((key, value if equals else None))
    return terms


def _osm_points(spec: str, terms: list[tuple[str, str | None]],
                osm_files: Sequence[str | Path]) -> tuple[list[Location], str]:
    """Tagged nodes and ways of every OSM file, in file order; the sha256 covers all files."""
    if not osm_files:
        raise LocgenError(f"{spec}: OSM tag sources need OSM data; "
                          "pass --osm FILE (.osm.pbf, .osm or .osm.bz2)")
    points, digests = [], []
    for path in map(Path, osm_files):
        if not path.is_file():
            raise LocgenError(f"{path}: no such OSM file; check the --osm path")
        digests.append(file_sha256(path))
        points += _osm_file_points(path, terms)
    return points, _combined_sha256(digests)


def _osm_file_points(path: Path, terms: list[tuple[str, str | None]]) -> list[Location]:
    keys = {key for key, _ in terms}
    # The key filter runs in C++ and drops most objects before Python sees them; values are checked here.
    processor = (osmium.FileProcessor(str(path), osmium.osm.NODE | osmium.osm.WAY)
                 .with_locations().with_filter(osmium.filter.KeyFilter(*keys)))
    points = []
    try:
        for obj in processor:
            if _tags_match(obj.tags, terms):
                points += _osm_object_location(obj, path)
    except RuntimeError as exc:  # libosmium reports corrupt or truncated files as RuntimeError
        raise LocgenError(f"{path}: cannot read OSM data ({exc}); give a valid .osm.pbf, .osm or .osm.bz2 "
                          "(re-download it if it was cut short)") from None
    return points


def _tags_match(tags: osmium.osm.TagList, terms: Iterable[tuple[str, str | None]]) -> bool:
    return any(key in tags and value in (None, tags[key]) for key, value in terms)


def _osm_object_location(obj: osmium.osm.OSMObject, path: Path) -> list[Location]:
    """A node's location or the mean of a way's located nodes; [] for a way wholly outside the extract."""
    if obj.is_node():
        ref, members = f"n{obj.id}", [obj]
    else:
        ref, members = f"w{obj.id}", list(obj.nodes)
        if len(members) > 1 and obj.is_closed():
            members = members[:-1]  # the closing node repeats the first: counting it twice skews the mean
    located = [member.location for member in members if member.location.valid()]
    if not located:
        return []
    lon = sum(location.lon for location in located) / len(located)
    lat = sum(location.lat for location in located) / len(located)
    return [_location(lon, lat, 1.0, "osm", ref, f"{path}: {ref}")]
