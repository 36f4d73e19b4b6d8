"""Overpass source: the query, the on-disk cache, and one clear line for every way a fetch can fail.

Every request goes to tests/overpass_server.py on 127.0.0.1, never to the internet.
"""

import functools
import os

import osmium
import pytest
from conftest import HELSINKI_PBF
from drip_server import DripServer
from overpass_server import (
    OverpassServer,
    bad_request,
    cut_off,
    empty_result,
    gateway_timeout,
    html_page,
    rate_limited,
    runtime_error,
    stall,
)
from s3server import refusing_port

from components.core.errors import LocgenError
from components.core.geo import LonLatBounds
from components.sources.overpass import OVERPASS_LIMITS, fetch_overpass, overpass_query

# Two neighbouring areas inside the Helsinki sample extract (around Kluuvi and Kruununhaka).
KLUUVI = LonLatBounds(24.940, 60.166, 24.946, 60.170)
KRUUNUNHAKA = LonLatBounds(24.946, 60.170, 24.952, 60.174)


@pytest.fixture
def server():
    with OverpassServer() as overpass:
        yield overpass


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "overpass-cache"


@functools.lru_cache
def load_extract() -> tuple[dict, dict, dict]:
    """The sample extract as plain values: node locations, way node refs, relation (type, members)."""
    nodes, ways, relations = {}, {}, {}
    for obj in osmium.FileProcessor(HELSINKI_PBF):
        if obj.is_node():
            nodes[obj.id] = (obj.location.lon, obj.location.lat)
        elif obj.is_way():
            ways[obj.id] = [node.ref for node in obj.nodes]
        elif obj.is_relation():
            relations[obj.id] = (obj.tags.get("type"), [(member.type, member.ref) for member in obj.members])
    return nodes, ways, relations


def expected_ids(bbox: LonLatBounds) -> tuple[set, set, set]:
    """Node, way and relation ids that the query selects from the extract, in plain Python.

    Written apart from the server's libosmium IdTracker on purpose: both must agree.
    """
    nodes, ways, relations = load_extract()
    west, south, east, north = bbox
    inside = {node_id for node_id, (lon, lat) in nodes.items()
              if west <= lon <= east and south <= lat <= north}
    way_ids = {way_id for way_id, refs in ways.items() if inside.intersection(refs)}
    relation_ids = {relation_id for relation_id, (_, members) in relations.items()
                    if any((kind == "n" and ref in inside) or (kind == "w" and ref in way_ids)
                           for kind, ref in members)}
    area_members = [members for relation_id in relation_ids
                    for kind, members in [relations[relation_id]] if kind == "multipolygon"]
    way_ids |= {ref for members in area_members for kind, ref in members if kind == "w" and ref in ways}
    node_ids = (inside | {ref for members in area_members for kind, ref in members if kind == "n"}
                | {ref for way_id in way_ids for ref in ways[way_id]})
    return node_ids & nodes.keys(), way_ids, relation_ids


def read_ids(path) -> tuple[set, set, set, dict]:
    """Node, way and relation ids in an OSM file, and each way's node refs."""
    nodes, relations, way_refs = set(), set(), {}
    for obj in osmium.FileProcessor(path):
        if obj.is_node():
            nodes.add(obj.id)
        elif obj.is_way():
            way_refs[obj.id] = [node.ref for node in obj.nodes]
        elif obj.is_relation():
            relations.add(obj.id)
    return nodes, set(way_refs), relations, way_refs


def test_query_has_bbox_in_overpass_order_and_recurses_down():
    query = overpass_query(KLUUVI)
    assert query.startswith("[out:xml]")
    for statement in ("node", "way", "rel"):
        assert f"{statement}(60.1660000,24.9400000,60.1700000,24.9460000);" in query
    assert ">;" in query and "rel.inbox[type=multipolygon];" in query
    assert query.rstrip().endswith("out body;")


def test_query_rejects_an_inverted_bbox():
    with pytest.raises(LocgenError, match="inverted"):
        overpass_query(LonLatBounds(24.95, 60.17, 24.94, 60.16))


def test_fetch_returns_the_extract_cut_to_the_bbox(server, cache_dir):
    path = fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir)

    nodes, ways, relations, way_refs = read_ids(path)
    expected_nodes, expected_ways, expected_relations = expected_ids(KLUUVI)
    assert len(nodes) > 1000 and len(ways) > 100 and relations
    assert (nodes, ways, relations) == (expected_nodes, expected_ways, expected_relations)
    # Full geometry: no way misses a node that the extract has, even where the way leaves the bbox.
    extract_nodes = load_extract()[0]
    assert all(ref in nodes for refs in way_refs.values() for ref in refs if ref in extract_nodes)
    assert any(not KLUUVI.west <= extract_nodes[ref][0] <= KLUUVI.east for ref in nodes)
    assert path.parent == cache_dir and path.suffix == ".osm"
    [request] = server.requests
    assert request.query == overpass_query(KLUUVI)
    assert request.user_agent.startswith("locgen/")
    assert request.content_type == "application/x-www-form-urlencoded"


def test_second_fetch_is_served_from_the_cache(server, cache_dir):
    first = fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir)
    content = first.read_bytes()
    second = fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir)
    assert second == first and second.read_bytes() == content
    assert len(server.requests) == 1
    assert [p.name for p in cache_dir.iterdir()] == [first.name]


def test_another_bbox_or_endpoint_makes_a_new_request(server, cache_dir):
    kluuvi = fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir)
    kruununhaka = fetch_overpass(KRUUNUNHAKA, url=server.url, cache_dir=cache_dir)
    assert kruununhaka != kluuvi and len(server.requests) == 2
    assert read_ids(kruununhaka)[:3] == expected_ids(KRUUNUNHAKA)
    with OverpassServer() as other:
        assert fetch_overpass(KLUUVI, url=other.url, cache_dir=cache_dir) != kluuvi
        assert len(other.requests) == 1


@pytest.mark.parametrize("make_reply, says", [
    (rate_limited, "busy (HTTP 429"),
    (gateway_timeout, "busy (HTTP 504"),
    (bad_request, "HTTP 400 Bad Request: Error: line 1: parse error"),
    (html_page, "did not answer with OSM XML"),
    (runtime_error, 'runtime error: Query timed out in "query"'),
    (empty_result, "no OSM data in bbox 24.94,60.166,24.946,60.17"),
    (functools.partial(cut_off, KLUUVI), "cut off"),
], ids=["429", "504", "400", "html", "remark", "empty", "cut-off"])
def test_a_failed_fetch_says_why_in_one_line_and_caches_nothing(server, cache_dir, make_reply, says):
    server.script(make_reply())
    with pytest.raises(LocgenError) as error:
        fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir)
    message = str(error.value)
    assert says in message and server.url in message and "\n" not in message
    assert list(cache_dir.iterdir()) == []
    # The failure was not cached: the next fetch asks again and succeeds.
    assert fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir).is_file()
    assert len(server.requests) == 2


def test_busy_errors_suggest_a_retry_or_a_local_file(server, cache_dir):
    server.script(rate_limited())
    with pytest.raises(LocgenError, match="retry in a few minutes or pass a local .osm.pbf"):
        fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir)


def test_an_unreachable_endpoint_fails_at_the_refusal(cache_dir):
    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}/api/interpreter"
        with pytest.raises(LocgenError, match="cannot reach the Overpass API at " + url) as error:
            fetch_overpass(KLUUVI, url=url, cache_dir=cache_dir)
    message = str(error.value)
    # It reports the refused connection itself, at once: not a timeout after waiting out the 180 s default.
    assert "Connection refused" in message and "within" not in message
    assert "\n" not in message
    assert list(cache_dir.iterdir()) == []


def test_a_silent_endpoint_times_out(server, cache_dir):
    server.script(stall())  # held until released: only the client's timeout can end the wait
    with pytest.raises(LocgenError, match="did not answer within 0.2 s"):
        fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir, limits=OVERPASS_LIMITS._replace(stall_s=0.2))
    assert list(cache_dir.iterdir()) == []
    server.release()
    # The timeout was not cached: the next fetch asks again and gets the data.
    assert fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir).is_file()


@pytest.mark.parametrize("mode, limits, says", [
    ("endless", OVERPASS_LIMITS._replace(max_mb=2), "sent more than the 2 MB a download may take; if the answer is "
                                                    "that large, raise --overpass-max-mb"),
    ("drip", OVERPASS_LIMITS._replace(deadline_s=0.3), "the download was not done after 0.3 s; retry later, or raise "
                                                        "--overpass-deadline-s"),
])
def test_an_answer_that_never_ends_is_cut_at_its_bound_and_leaves_nothing(mode, limits, says, cache_dir):
    with DripServer(mode) as server:
        url = f"{server.url}/api/interpreter"
        with pytest.raises(LocgenError) as error:
            fetch_overpass(KLUUVI, url=url, cache_dir=cache_dir, limits=limits)
    assert str(error.value) == f"Overpass API at {url}: {says}"
    assert list(cache_dir.iterdir()) == []


def test_a_partial_download_that_no_live_download_can_own_is_removed(server, cache_dir):
    cache_dir.mkdir()
    dead, live = cache_dir / ".0123abcd.x1.part", cache_dir / ".4567cdef.x2.part"
    dead.write_bytes(b"<osm" + bytes(1000))
    live.write_bytes(b"<osm")
    # written last a moment longer ago than a download may last, deadline and one stall
    last_written_s = live.stat().st_mtime - OVERPASS_LIMITS.deadline_s - OVERPASS_LIMITS.stall_s - 1
    os.utime(dead, (last_written_s, last_written_s))
    path = fetch_overpass(KLUUVI, url=server.url, cache_dir=cache_dir)
    assert sorted(cache_dir.iterdir()) == sorted([live, path])


def test_a_url_that_is_not_http_is_refused(cache_dir):
    with pytest.raises(LocgenError, match="not an http"):
        fetch_overpass(KLUUVI, url="file:///etc/passwd", cache_dir=cache_dir)


def test_an_unwritable_cache_dir_is_named(server, tmp_path):
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file, not a directory")
    with pytest.raises(LocgenError, match=f"cannot write the Overpass cache in {not_a_dir}"):
        fetch_overpass(KLUUVI, url=server.url, cache_dir=not_a_dir)
    assert server.requests == []
