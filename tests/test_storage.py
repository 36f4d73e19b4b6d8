"""Storage against a local directory and a real S3 server on loopback (moto), with no mocks."""

import multiprocessing
import pickle
import socket
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import moto.settings
import pytest
import urllib3
from s3server import DyingProxy, RequestSplitter, S3Server, refusing_port, unique_prefix

from components.core import storage
from components.core.errors import LocgenError
from components.core.storage import LocalStore, S3Config, S3Store, cache_folder, open_store, split_s3_uri


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """An empty store of each kind."""
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    s3 = request.getfixturevalue("s3_env")
    return open_store(f"s3://{s3.bucket}/{unique_prefix()}/")


def raw_keys(store, s3: S3Server) -> set[str]:
    """Every file or object under the store's root, temporary ones included: bypasses list_keys."""
    if isinstance(store, LocalStore):
        root = Path(store.uri)
        return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}
    _, prefix = split_s3_uri(store.uri)
    return {name.removeprefix(prefix + "/") for name in s3.object_names(prefix + "/")}


def remove_raw(store, s3: S3Server, key: str) -> None:
    """Remove the file or object under `key` behind the store's back (stores have no delete)."""
    if isinstance(store, LocalStore):
        (Path(store.uri) / key).unlink()
    else:
        bucket, prefix = split_s3_uri(store.uri)
        s3.client().remove_object(bucket, f"{prefix}/{key}")


def test_round_trip(store, s3):
    assert store.list_keys() == set()
    assert not store.exists("a/b/c.png")
    store.put_bytes("a/b/c.png", b"\x89PNG one", content_type="image/png")
    store.put_bytes("a/d.json", b"{}", content_type="application/json")
    store.put_bytes("top.txt", b"top")
    assert store.exists("a/b/c.png")
    assert store.get_bytes("a/b/c.png") == b"\x89PNG one"
    store.put_bytes("a/b/c.png", b"\x89PNG two")
    assert store.get_bytes("a/b/c.png") == b"\x89PNG two"
    assert store.list_keys() == {"a/b/c.png", "a/d.json", "top.txt"}
    remove_raw(store, s3, "a/d.json")
    assert not store.exists("a/d.json")
    assert store.list_keys() == {"a/b/c.png", "top.txt"}


def test_one_store_shared_by_threads(store):
    keys = [f"tiles/{n:04d}.png" for n in range(64)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: store.put_bytes(key, key.encode()), keys))
        contents = list(pool.map(store.get_bytes, keys))
    assert contents == [key.encode() for key in keys]
    assert store.list_keys("tiles/") == set(keys)


def test_list_under_prefix_is_recursive_and_relative_to_root(store):
    for key in ["tiles/z15/1.png", "tiles/z15/deep/2.png", "tiles2/3.png", "tiles.jsonl"]:
        store.put_bytes(key, b"x")
    assert store.list_keys("tiles/") == {"tiles/z15/1.png", "tiles/z15/deep/2.png"}
    assert store.list_keys("tiles/z15/d") == {"tiles/z15/deep/2.png"}
    assert store.list_keys("tiles") == {"tiles/z15/1.png", "tiles/z15/deep/2.png", "tiles2/3.png",
                                        "tiles.jsonl"}
    assert store.list_keys("nothing/") == set()


def test_root_prefix_does_not_leak_into_a_sibling(s3_env):
    root = unique_prefix()
    open_store(f"s3://{s3_env.bucket}/{root}2").put_bytes("x.png", b"sibling")
    store = open_store(f"s3://{s3_env.bucket}/{root}")
    store.put_bytes("y.png", b"mine")
    assert store.list_keys() == {"y.png"}
    assert store.url("y.png") == f"s3://{s3_env.bucket}/{root}/y.png"


def test_publish_leaves_no_temporary_keys(store, s3):
    store.publish_bytes("out/points.csv", b"lat,lon\n", content_type="text/csv")
    store.publish_bytes("out/points.csv", b"lat,lon\n60.1,24.9\n", content_type="text/csv")
    assert store.get_bytes("out/points.csv") == b"lat,lon\n60.1,24.9\n"
    assert raw_keys(store, s3) == {"out/points.csv"}
    if isinstance(store, S3Store):
        bucket, prefix = split_s3_uri(store.uri)
        stat = s3.client().stat_object(bucket, f"{prefix}/out/points.csv")
        assert stat.content_type == "text/csv"


def test_list_hides_temporary_keys_left_by_a_crash(store, s3):
    store.put_bytes("a.png", b"x")
    store.put_bytes("a.png.tmp-0123456789abcdef0123456789abcdef", b"half")
    assert store.list_keys() == {"a.png"}
    assert len(raw_keys(store, s3)) == 2
    remove_raw(store, s3, "a.png.tmp-0123456789abcdef0123456789abcdef")  # later tests check the bucket has none


def test_missing_key_names_the_full_uri(store, tmp_path):
    with pytest.raises(LocgenError, match=f"^{store.url('no/such.png')} does not exist"):
        store.get_bytes("no/such.png")
    with pytest.raises(LocgenError, match=f"^{store.url('no/such.png')} does not exist"):
        store.download_to("no/such.png", tmp_path / "dl" / "such.png")
    assert not (tmp_path / "dl" / "such.png").exists()


def test_download_to(store, tmp_path):
    store.put_bytes("osm/city.osm.pbf", b"pbf bytes" * 1000)
    path = store.download_to("osm/city.osm.pbf", tmp_path / "dl" / "city.osm.pbf")
    assert path == tmp_path / "dl" / "city.osm.pbf"
    assert path.read_bytes() == b"pbf bytes" * 1000
    assert [p.name for p in path.parent.iterdir()] == ["city.osm.pbf"]


@pytest.mark.parametrize("key", ["", "/abs.png", "a/../../etc/passwd", "a//b", "./a"])
def test_bad_keys_are_rejected(store, key):
    with pytest.raises(LocgenError, match="invalid key"):
        store.put_bytes(key, b"x")


def test_cache_folders_keep_their_names():
    # Named as before the one function existed, so the caches already on disk stay valid.
    assert cache_folder(Path("/cache/models"), "s3://bucket/runs/1/model.onnx") == \
        Path("/cache/models/d8194431e1fac8f8")


def test_file_uri(tmp_path):
    store = open_store(f"file://{tmp_path}/out/")
    assert isinstance(store, LocalStore)
    assert store.uri == str(tmp_path / "out")
    store.put_bytes("x/y.txt", b"hello")
    assert (tmp_path / "out" / "x" / "y.txt").read_bytes() == b"hello"
    assert store.url("x/y.txt") == f"{tmp_path}/out/x/y.txt"
    assert open_store(f"file://localhost{tmp_path}/out").get_bytes("x/y.txt") == b"hello"


@pytest.mark.parametrize("uri", ["file://otherhost/x", "gs://bucket/x", "", "s3://Bad_Bucket/x", "s3://b"])
def test_bad_uris(uri):
    with pytest.raises(LocgenError):
        open_store(uri)


def test_split_s3_uri():
    assert split_s3_uri("s3://bucket") == ("bucket", "")
    assert split_s3_uri("s3://bucket/") == ("bucket", "")
    assert split_s3_uri("s3://my.bucket-1/a/b/") == ("my.bucket-1", "a/b")
    with pytest.raises(LocgenError, match="s3://bucket/prefix"):
        split_s3_uri("/local/path")
    with pytest.raises(LocgenError, match="invalid prefix"):
        split_s3_uri("s3://bucket/a//b")


@pytest.mark.parametrize("env, variable", [
    ({"AWS_ENDPOINT_URL": "minio:9000"}, "AWS_ENDPOINT_URL"),
    ({"AWS_ENDPOINT_URL": "http://minio:9000/some/path"}, "AWS_ENDPOINT_URL"),
    ({"AWS_ACCESS_KEY_ID": "key"}, "AWS_SECRET_ACCESS_KEY"),
    ({"AWS_CA_BUNDLE": "/no/such/ca.pem"}, "AWS_CA_BUNDLE"),
])
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(LocgenError, match=variable):
        S3Config.from_env(env)


def test_settings_defaults_and_secrets_out_of_repr():
    config = S3Config.from_env({"AWS_ENDPOINT_URL": "", "AWS_ACCESS_KEY_ID": "key-id",
                                "AWS_SECRET_ACCESS_KEY": "top-secret", "AWS_REGION": ""})
    assert (config.endpoint_url, config.region, config.session_token) == ("https://s3.amazonaws.com",
                                                                          "us-east-1", None)
    assert "key-id" not in repr(config) and "top-secret" not in repr(config)


def test_unreachable_store_fails_fast_with_one_line(s3, monkeypatch):
    # The backoff urllib3 would sleep before each retry is recorded, not slept: the test counts the
    # retries and adds up their waits instead of timing them.
    waits = []
    monkeypatch.setattr(urllib3.util.retry.Retry, "sleep",
                        lambda retry, response=None: waits.append(retry.get_backoff_time()))
    with refusing_port() as port:  # refused at once, on every run
        endpoint = f"http://127.0.0.1:{port}"
        store = S3Store("s3://bucket/p", S3Config.from_env(s3.env(endpoint)))
        with pytest.raises(LocgenError) as caught:
            store.put_bytes("a.png", b"x")
    # A few retries with a short backoff, then the error: within about a second, not an endless retry.
    assert len(waits) == storage.RETRIES and sum(waits) < 2
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"object store {endpoint} (AWS_ENDPOINT_URL) is unreachable: ")
    assert message.endswith("; check the endpoint and that the server runs")


def test_missing_bucket_says_how_to_create_it(s3):
    store = S3Store("s3://no-such-bucket/p", S3Config.from_env(s3.env()))
    expected = "bucket 'no-such-bucket' does not exist on .* create it first, e.g. `mc mb"
    for call in [lambda: store.put_bytes("a", b"x"), lambda: store.get_bytes("a"), store.list_keys,
                 lambda: store.exists("a")]:
        with pytest.raises(LocgenError, match=expected):
            call()


def test_bad_credentials_name_the_variables(s3, monkeypatch):
    # With this count at 0 moto checks every signature against its IAM users, who do not have our key.
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    store = S3Store(f"s3://{s3.bucket}/p", S3Config.from_env(s3.env()))
    with pytest.raises(LocgenError, match=r"denied by .* \(InvalidAccessKeyId\); check AWS_ACCESS_KEY_ID, "
                                          r"AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"):
        store.put_bytes("a.png", b"x")


def _child_round_trip(store: S3Store, n: int) -> bytes:
    """Runs in a spawned process: write with the unpickled store, then read back."""
    store.put_bytes(f"child/{n}.bin", bytes([n]) * 10)
    return store.get_bytes(f"child/{n}.bin")


def test_s3_store_pickles_and_works_in_child_processes(s3):
    store = S3Store(f"s3://{s3.bucket}/{unique_prefix()}", S3Config.from_env(s3.env()))
    store.put_bytes("parent.bin", b"p")  # the parent's client is live: pickling must leave it out
    clone = pickle.loads(pickle.dumps(store))
    assert clone.uri == store.uri and clone.get_bytes("parent.bin") == b"p"
    # spawn: the children get their settings from the pickled store, not from AWS_* variables (none set).
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_child_round_trip, [store] * 4, range(4)))
    assert results == [bytes([n]) * 10 for n in range(4)]
    assert store.list_keys("child/") == {f"child/{n}.bin" for n in range(4)}


def test_request_splitter_finds_request_lines_only_at_boundaries():
    body = b"PUT /b/evil.png HTTP/1.1\r\n\r\n"  # a body that looks like a request
    stream = (b"PUT /b/1.json HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
              + b"GET /b/2.png HTTP/1.1\r\nHost: x\r\n\r\n")
    splitter = RequestSplitter()
    # Byte by byte: heads and bodies split across reads must still be found.
    lines = [line for i in range(len(stream)) for line, _ in splitter.feed(stream[i:i + 1]) if line]
    assert lines == [b"PUT /b/1.json HTTP/1.1", b"GET /b/2.png HTTP/1.1"]


def test_dying_proxy_dies_at_exactly_the_nth_put(s3):
    prefix = unique_prefix()
    with DyingProxy(s3.endpoint_url, rb"^PUT /\S+\.png ", nth=3) as proxy:
        store = S3Store(f"s3://{s3.bucket}/{prefix}", S3Config.from_env(s3.env(proxy.url)))
        # A body that looks like a matching request line must not count: only request lines do.
        store.put_bytes("meta.json", b"PUT /x/fake.png HTTP/1.1\r\n\r\n")
        store.put_bytes("1.png", b"one")
        assert store.get_bytes("1.png") == b"one"
        store.put_bytes("2.png", b"two")
        assert not proxy.died.is_set()
        with pytest.raises(LocgenError, match="is unreachable"):
            store.put_bytes("3.png", b"three")
        assert proxy.died.is_set() and proxy.matched == 3
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), timeout=2)
    assert s3.object_names(prefix + "/") == {f"{prefix}/meta.json", f"{prefix}/1.png", f"{prefix}/2.png"}
