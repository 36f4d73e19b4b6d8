"""A loopback imitation of the Overpass API interpreter endpoint, so that tests never reach the internet.

It accepts what the real endpoint accepts from locgen (a POST with the query in form field `data`),
reads the bbox out of the query and answers like Overpass would: OSM XML cut from the real sample
extract. Cutting follows locgen's query: the nodes in the bbox, the ways that use any of them, the
relations with any of those as members, then every node of those ways and the member ways (and their
nodes) of those multipolygons. It records each request, and answers scripted replies first (busy,
HTML page, runtime error, empty result, ...) so that tests can exercise every failure.

    with OverpassServer() as server:
        server.script(rate_limited())
        fetch_overpass(bbox, url=server.url, cache_dir=...)
"""

from __future__ import annotations

import collections
import functools
import re
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import osmium

from components.core.geo import LonLatBounds

SAMPLE_PBF = Path(__file__).resolve().parents[1] / "data" / "osm" / "helsinki-center.osm.pbf"
OSM_CONTENT_TYPE = "application/osm3s+xml"  # what overpass-api.de sends with XML answers
OVERPASS_NOTE = ("<note>The data included in this document is from www.openstreetmap.org. "
                 "The data is made available under ODbL.</note>")
# The first bbox filter in the query, in Overpass order: (south,west,north,east).
BBOX_FILTER = re.compile(r"\(\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\)")


@dataclass(frozen=True)
class Reply:
    """An HTTP answer; a `held` one is sent only once the test releases the server (or it closes)."""

    status: int
    body: bytes
    content_type: str = OSM_CONTENT_TYPE
    held: bool = False


@dataclass(frozen=True)
class Request:
    """What the server received: the query and the headers that tests check."""

    query: str
    user_agent: str
    content_type: str


def overpass_document(body: str = "", osm_base: str = "2024-06-01T00:00:00Z") -> bytes:
    """An OSM XML document framed as Overpass frames it: <note> and <meta osm_base>, then `body`."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<osm version="0.6" generator="Overpass API 0.7.62.1 084b4234">\n{OVERPASS_NOTE}\n'
            f'<meta osm_base="{osm_base}"/>\n\n{body}</osm>\n').encode()


def error_page(status: int, message: str) -> Reply:
    """Overpass's own HTML error page (it starts with an XML declaration, like the OSM answers)."""
    page = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"\n'
            '    "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
            '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n<head>\n'
            '  <meta http-equiv="content-type" content="text/html; charset=utf-8" lang="en"/>\n'
            '  <title>OSM3S Response</title>\n</head>\n<body>\n\n'
            '<p>The data included in this document is from www.openstreetmap.org. '
            'The data is made available under ODbL.</p>\n'
            f'<p><strong style="color:#FF0000">Error</strong>: {message} </p>\n\n</body>\n</html>\n')
    return Reply(status, page.encode(), "text/html; charset=utf-8")


def rate_limited() -> Reply:
    """HTTP 429: this client has used up its slots."""
    return error_page(429, "runtime error: open64: 0 Success /osm3s_osm_base "
                           "Dispatcher_Client::request_read_and_idx::rate_limited. "
                           "Please check /api/status for the quota of your IP address.")


def gateway_timeout() -> Reply:
    """HTTP 504 from the web server in front of Overpass, which gave up waiting for a free slot."""
    page = ("<html>\n<head><title>504 Gateway Time-out</title></head>\n<body>\n"
            "<center><h1>504 Gateway Time-out</h1></center>\n</body>\n</html>\n")
    return Reply(504, page.encode(), "text/html")


def bad_request() -> Reply:
    """HTTP 400: Overpass could not parse the query."""
    return error_page(400, "line 1: parse error: Unknown type &quot;nod&quot;")


def html_page() -> Reply:
    """HTTP 200 with a web page instead of data: a wrong URL, a captive portal or a proxy's notice."""
    page = ("<!DOCTYPE html>\n<html>\n<head><title>Welcome to nginx!</title></head>\n"
            "<body><h1>Welcome to nginx!</h1></body>\n</html>\n")
    return Reply(200, page.encode(), "text/html")


def runtime_error() -> Reply:
    """HTTP 200 with a <remark>: how Overpass reports a query that timed out or ran out of memory."""
    remark = ('<remark> runtime error: Query timed out in "query" at line 3 after 181 seconds. </remark>\n\n')
    return Reply(200, overpass_document(remark))


def empty_result() -> Reply:
    """HTTP 200 with a valid document without any element: a bbox over open sea."""
    return Reply(200, overpass_document())


def cut_off(bbox: LonLatBounds, pbf: Path = SAMPLE_PBF) -> Reply:
    """HTTP 200 with the first half of a real answer, as a server that died mid-way would leave it."""
    document = osm_xml_for_bbox(pbf, bbox, False)
    return Reply(200, document[:len(document) // 2])


def stall() -> Reply:
    """A real answer held back until `OverpassServer.release()` (or the server closes).

    Nothing is sent before then, however long the client waits: its timeout fires first, whatever it
    is and however slow the machine, instead of racing a fixed delay.
    """
    return Reply(200, empty_result().body, held=True)


def select_ids(pbf: Path, bbox: LonLatBounds) -> osmium.IdTracker:
    """The ids of the objects that locgen's Overpass query returns for `bbox`, found with libosmium."""
    west, south, east, north = bbox
    inside = [node.id for node in osmium.FileProcessor(pbf, osmium.osm.NODE)
              if west <= node.location.lon <= east and south <= node.location.lat <= north]
    # Added after reading, not while: add_node() inside the loop waits on the reader threads each time.
    tracker = osmium.IdTracker()
    for node_id in inside:
        tracker.add_node(node_id)
    # way(bbox) and rel(bbox): the ways using those nodes, the relations with those nodes or ways.
    tracker.complete_forward_references(pbf, relation_depth=0)
    relation_ids = []
    for relation in osmium.FileProcessor(pbf, osmium.osm.RELATION).with_filter(tracker.id_filter()):
        relation_ids.append(relation.id)
        if relation.tags.get("type") == "multipolygon":
            tracker.add_references(relation)  # `>` from a multipolygon: its member ways and nodes
    # `>` from the ways: their nodes. Set the relations aside first, or the other relations' members
    # (whole bus routes) would come along too.
    tracker.relation_ids().clear()
    tracker.complete_backward_references(pbf, relation_depth=0)
    for relation_id in relation_ids:
        tracker.add_relation(relation_id)
    return tracker


@functools.lru_cache(maxsize=16)  # no defaults: lru_cache keys f(a) and f(a, default) apart
def osm_xml_for_bbox(pbf: Path, bbox: LonLatBounds, metadata: bool) -> bytes:
    """The Overpass answer for `bbox` cut from `pbf`, as bytes (cached: several tests ask for the same)."""
    tracker = select_ids(pbf, bbox)
    newest = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "answer.osm"
        # `out body` leaves out version, timestamp, changeset and user; `out meta` keeps them.
        file = osmium.io.File(str(path), f"osm,add_metadata={str(metadata).lower()}")
        with osmium.SimpleWriter(file) as writer:
            for obj in osmium.FileProcessor(pbf).with_filter(tracker.id_filter()):
                newest = max(newest or obj.timestamp, obj.timestamp)
                writer.add(obj)
        written = path.read_text(encoding="utf-8")
    # Keep libosmium's elements, in Overpass's frame; osm_base is the date of the newest object.
    body = re.sub(r"\A<\?xml[^>]*\?>\s*<osm[^>]*>\s*", "", written).removesuffix("</osm>\n")
    osm_base = newest.strftime("%Y-%m-%dT%H:%M:%SZ") if newest else "2024-06-01T00:00:00Z"
    return overpass_document(body, osm_base)


class OverpassServer:
    """An imitation Overpass interpreter on 127.0.0.1 (a free port), serving in a background thread."""

    def __init__(self, pbf: Path = SAMPLE_PBF):
        self.pbf = pbf
        self.requests: list[Request] = []
        self._scripted: collections.deque[Reply] = collections.deque()
        self._released = threading.Event()  # lets held replies go
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True  # a stalled reply must not hold up close()
        self._httpd.overpass = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)  # a short poll: close() waits for the next one

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/api/interpreter"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, before serving data again."""
        self._scripted.extend(replies)

    def release(self) -> None:
        """Send the held replies (to clients that have most likely given up by now)."""
        self._released.set()

    def reply_to(self, query: str) -> Reply:
        """The scripted reply if one is left, else the answer from the extract."""
        if self._scripted:
            return self._scripted.popleft()
        match = BBOX_FILTER.search(query)
        if not match:
            return bad_request()
        south, west, north, east = (float(value) for value in match.groups())
        return Reply(200, osm_xml_for_bbox(self.pbf, LonLatBounds(west, south, east, north), "out meta" in query))

    def __enter__(self) -> OverpassServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    """Answers POST /api/interpreter with form field `data`, as Overpass does."""

    def do_POST(self) -> None:
        overpass: OverpassServer = self.server.overpass
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        query = urllib.parse.parse_qs(body).get("data", [""])[0]
        overpass.requests.append(Request(query, self.headers.get("User-Agent", ""),
                                         self.headers.get("Content-Type", "")))
        reply = overpass.reply_to(query) if query else error_page(400, "no query in form field data")
        if reply.held:
            overpass._released.wait()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test): nobody is left to answer

    def log_message(self, format: str, *args) -> None:
        """Keep the test output quiet."""
