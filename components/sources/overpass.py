"""Fetch an area's OpenStreetMap data from an Overpass API endpoint, cached on disk by query.

The answer is OSM XML that pyosmium reads like any .osm file. The cache file is named by the sha256 of
(endpoint URL, query), so a repeated run for the same area and endpoint makes no request, and it is
published with os.replace only after the answer was checked: the cache never holds a half-written,
an error or an empty answer.
"""

from __future__ import annotations

import hashlib
import html
import json
import mmap
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from components import __version__
from components.core.errors import LocgenError, one_line
from components.core.geo import LonLatBounds, check_bbox
from components.sources.web import REQUEST_ERRORS, DownloadLimits, download, failure_reason, timed_out

DEFAULT_OVERPASS_URL = "https://overpass-api.de/api/interpreter"
USER_AGENT = f"locgen/{__version__} (location generator; Python urllib)"
# Statuses by which Overpass says it is overloaded (rate limit, or no slot before its gateway gave up).
BUSY_STATUSES = {429, 503, 504}
# Bounds of one answer. The densest OSM data in ../shared/data, Helsinki's centre, is 6.5 MB of OSM XML per
# km² (10.8 MB for its 1.67 km² extract, written with metadata, which `out body` leaves out): 2000 MB holds
# some 300 km² of city centre, more of anything less dense, and fits on any disk the tiles fit on. 1800 s
# is the query's own 180 s on the server, then 2000 MB at 1.1 MB/s; the server may think for 180 s before
# it sends the first byte. A larger area: raise the bounds, or give an extract (.osm.pbf).
OVERPASS_LIMITS = DownloadLimits(max_mb=2000, deadline_s=1800, stall_s=180,
                                 options=("--overpass-max-mb", "--overpass-deadline-s"))
# An OSM XML document: an optional XML declaration, then the <osm> root element. An Overpass HTML error
# page also starts with an XML declaration, so the root element is what tells them apart.
OSM_XML_START = re.compile(rb"\A\s*(?:<\?xml[^>]*\?>\s*)?<osm[\s>]")
REMARK = re.compile(rb"<remark>(.*?)</remark>", re.S)
FIX_BUSY = "retry in a few minutes or pass a local .osm.pbf instead"


def overpass_query(bbox: LonLatBounds) -> str:
    """Overpass QL for everything in a lon/lat bbox, with the full geometry of its ways and multipolygons.

    Selects the nodes, ways and relations in the bbox, then recurses down (`>`) from the ways and from
    the multipolygon relations, so that every way and every area is complete even where it leaves the
    bbox. Other relations (bus routes, administrative boundaries) are kept without recursing: their
    members can span a whole country and the map style draws none of them as areas.

    `out body` rather than `out meta`: the tiles need tags and geometry only; the metadata would make
    every element longer (version and timestamp alone: +14 % on the Helsinki sample; changeset, user
    and uid come on top) and put contributors' user names into our caches and artifacts.
    The date of the data is still in the answer's <meta osm_base="..."/> element.
    """
    west, south, east, north = check_bbox(bbox)
    box = f"{south:.7f},{west:.7f},{north:.7f},{east:.7f}"  # Overpass order; OSM stores 7 decimals
    return (
        "[out:xml][timeout:180];\n"
        f"(\n  node({box});\n  way({box});\n  rel({box});\n)->.inbox;\n"
        "(\n  .inbox;\n  way.inbox;\n  >;\n  rel.inbox[type=multipolygon];\n  >;\n);\n"
        "out body;\n"
    )


def fetch_overpass(bbox: LonLatBounds, *, url: str = DEFAULT_OVERPASS_URL, cache_dir: Path,
                   limits: DownloadLimits = OVERPASS_LIMITS) -> Path:
    """Path of a cached .osm (XML) file with the OSM data in `bbox`; asks `url` only on a cache miss, with
    the answer's size and time bounded by `limits`. Partial downloads that no live download can own are
    removed first (a killed run leaves its .part behind)."""
    query = overpass_query(bbox)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise LocgenError(f"Overpass URL '{url}' is not an http(s) URL; give an interpreter endpoint "
                          f"such as {DEFAULT_OVERPASS_URL}")
    key = hashlib.sha256(json.dumps([url, query]).encode()).hexdigest()
    path = Path(cache_dir) / f"{key}.osm"
    if path.is_file():
        return path  # published only after its check below, so a hit needs no new check
    try:
        _remove_stale_parts(path.parent, limits)
        part = _new_part_file(path)
        try:
            _download(url, query, limits, part)
            _check_osm_xml(part, url, bbox)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)  # gone already after a successful os.replace
    except OSError as error:  # network errors are LocgenErrors by now: this is the cache's own disk
        raise LocgenError(f"cannot write the Overpass cache in {cache_dir}: {error.strerror or error}; "
                          "give a writable cache directory with free space") from None
    return path


def _new_part_file(path: Path) -> Path:
    """Create an empty, uniquely named temporary file beside `path` (same file system for os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
    os.close(fd)
    return Path(name)


def _remove_stale_parts(folder: Path, limits: DownloadLimits) -> None:
    """Remove the .part files last written longer ago than a download may last: no live download (of a
    run with these bounds) owns them, since each one is written to as its answer arrives."""
    stale_before_s = time.time() - limits.deadline_s - limits.stall_s
    for part in folder.glob(".*.part"):
        try:
            if part.stat().st_mtime < stale_before_s:
                part.unlink()
        except FileNotFoundError:
            pass  # another run removed it first


def _download(url: str, query: str, limits: DownloadLimits, part: Path) -> None:
    """POST the query as form field `data` and stream the answer into `part`, within `limits`."""
    request = urllib.request.Request(
        url, data=urllib.parse.urlencode({"data": query}).encode(), method="POST",
        headers={"User-Agent": USER_AGENT, "Content-Type": "application/x-www-form-urlencoded"})
    with open(part, "wb", buffering=0) as out:  # unbuffered: the file's time says the download is alive
        try:
            download(request, f"Overpass API at {url}", limits, out.write)
        except urllib.error.HTTPError as error:
            raise _http_error(url, error) from None
        except REQUEST_ERRORS as error:
            raise _request_error(url, limits, error) from None


def _request_error(url: str, limits: DownloadLimits, error: BaseException) -> LocgenError:
    """What a failed request or read says: a wait over the stall bound, no connection, or a broken one."""
    if timed_out(error):
        return LocgenError(f"Overpass API at {url} did not answer within {limits.stall_s:g} s; {FIX_BUSY}")
    if isinstance(error, urllib.error.URLError):  # urllib's wrapping of what failed before any answer
        return LocgenError(f"cannot reach the Overpass API at {url} ({failure_reason(error)}); check the URL "
                           "and the network, or pass a local .osm.pbf instead")
    return LocgenError(f"the download from the Overpass API at {url} broke off ({one_line(repr(error))}); "
                       f"{FIX_BUSY}")


def _http_error(url: str, error: urllib.error.HTTPError) -> LocgenError:
    """One line for an HTTP error status: busy (retry later) or a wrong endpoint or query."""
    status = failure_reason(error)
    if error.code in BUSY_STATUSES:
        return LocgenError(f"Overpass API at {url} is busy ({status}); {FIX_BUSY}")
    try:
        text = _page_text(error.read(4096))
    except REQUEST_ERRORS:
        text = ""  # the status alone still tells what went wrong
    detail = f": {text}" if text else ""
    return LocgenError(f"Overpass API at {url} answered {status}{detail}; check that "
                       f"the URL is an Overpass interpreter endpoint such as {DEFAULT_OVERPASS_URL}")


def _check_osm_xml(part: Path, url: str, bbox: LonLatBounds) -> None:
    """Raise a LocgenError unless `part` is a complete OSM XML answer with at least one node.

    Scans the raw bytes instead of parsing: a city's answer can be hundreds of MB, and in OSM XML a
    literal '<' only ever starts markup (values are escaped), so the byte patterns cannot be data.
    """
    if part.stat().st_size == 0:
        raise LocgenError(f"Overpass API at {url} sent an empty answer; {FIX_BUSY}")
    with open(part, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if not OSM_XML_START.match(data[:4096]):
            raise LocgenError(f"{url} did not answer with OSM XML (it starts with "
                              f"'{one_line(data[:80].decode(errors='replace'))}'); check that the URL is an "
                              f"Overpass interpreter endpoint such as {DEFAULT_OVERPASS_URL}")
        # Overpass reports a timeout or out-of-memory inside a status-200 document, as a <remark>.
        for remark in REMARK.finditer(data):
            text = _page_text(remark.group(1))
            if "error" in text.lower():
                raise LocgenError(f"Overpass API at {url} failed: {text}; {FIX_BUSY}, or use a smaller bbox")
        if not data[-256:].rstrip().endswith(b"</osm>"):
            raise LocgenError(f"the answer from the Overpass API at {url} is cut off (no closing </osm>); "
                              f"{FIX_BUSY}")
        if data.find(b"<node ") < 0:
            west, south, east, north = bbox
            raise LocgenError(f"no OSM data in bbox {west},{south},{east},{north} at {url}; check that the "
                              "bbox is WEST,SOUTH,EAST,NORTH in degrees around a mapped area")


def _page_text(body: bytes, limit: int = 200) -> str:
    """The readable text of an HTML/XML snippet on one line, from Overpass's 'Error:' on when present."""
    text = one_line(html.unescape(re.sub(r"<[^>]*>", " ", body.decode(errors="replace"))))
    error = re.search(r"\bError\s*:\s*", text)  # Overpass puts its licence note before the error
    return ("Error: " + text[error.end():] if error else text)[:limit]
