"""One URI scheme for everything a stage reads or writes: a local directory or an S3 prefix.

A store is rooted at a URI:

- a local path (`out/tiles`, `/data/tiles`) or a `file://` URI (`file:///data/tiles`);
- `s3://bucket/prefix` on any S3-compatible server (MinIO, SeaweedFS, Ceph, AWS S3), spoken to through
  the `minio` client.

Keys are relative, '/'-separated paths under the root (`tiles/000123.png`, `manifest.jsonl`).
`open_store(uri)` returns a `LocalStore` or an `S3Store`; both have the same methods.

S3 settings come from the environment (in a cluster: a Kubernetes Secret mapped to variables):

- `AWS_ENDPOINT_URL`: the server, e.g. `http://127.0.0.1:9000` or `https://minio.example:9000`; the
  scheme decides TLS. Default: `https://s3.amazonaws.com`.
- `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`: the keys, set together; neither means anonymous requests.
- `AWS_SESSION_TOKEN`: optional, for temporary credentials.
- `AWS_REGION`: the bucket's region. Default: `us-east-1` (what MinIO and most servers expect).
- `AWS_CA_BUNDLE`: a CA certificate file (PEM) for an endpoint whose certificate a private CA signed.
  Default: `SSL_CERT_FILE` if set, else the certifi bundle.

The bucket must exist: the store never creates it (`mc mb ALIAS/BUCKET` or `aws s3 mb s3://BUCKET`).

Guarantees:

- Readers never see a half-written object. Local writes go to a temporary file in the same directory
  and are renamed over the key with `os.replace`; a single S3 PUT is atomic already, and
  `publish_bytes` additionally stages the object under `<key>.tmp-<uuid>` and copies it server-side.
  `list_keys` hides such temporary keys, which a crash between the two steps may leave behind.
- Failures (an unreachable server, a missing bucket or key, denied access) raise one `LocgenError`
  line that names the input and the fix. Requests retry a few times with a short backoff on
  connection errors and HTTP 500/502/503/504, then give up within seconds.
- An `S3Store` pickles to its URI and settings and opens its own client in each process, so one
  store can be handed to a multiprocessing pool; within a process the client is thread-safe.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from components.core.errors import LocgenError, one_line

DEFAULT_ENDPOINT_URL = "https://s3.amazonaws.com"
DEFAULT_REGION = "us-east-1"
# Connecting is quick or hopeless; reading may wait on a busy server handing out a large object.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0
# 3 retries with backoff 0, 0.4, 0.8 s: an unreachable server fails in about a second (refused)
# or about 4 x CONNECT_TIMEOUT_S (dropped packets), while a blip during a long run is survived.
RETRIES = 3
BACKOFF_FACTOR_S = 0.2
# Sized for a thread pool of a few dozen workers sharing one client.
MAX_CONNECTIONS = 32
DOWNLOAD_CHUNK_BYTES = 1 << 20

_TMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{32}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CREDENTIAL_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                     "InvalidToken", "AllAccessDisabled"}
_REGION_CODES = {"AuthorizationHeaderMalformed", "PermanentRedirect", "Redirect"}


def default_cache_dir() -> Path:
    """Where locgen keeps what it downloads: $LOCGEN_CACHE, else ~/.cache/locgen."""
    return Path(os.environ.get("LOCGEN_CACHE", Path.home() / ".cache" / "locgen"))


def open_store(uri: str | os.PathLike[str]) -> Store:
    """Return the store rooted at `uri`: a local path, a `file://` URI or `s3://bucket/prefix`."""
    uri = os.fspath(uri)
    if not uri:
        raise LocgenError("empty storage URI; give a local path, file:///abs/path or s3://bucket/prefix")
    if uri.startswith("s3://"):
        return S3Store(uri, S3Config.from_env())
    if uri.startswith("file://"):
        return LocalStore(_file_uri_path(uri))
    if _SCHEME.match(uri):
        raise LocgenError(f"unsupported storage URI {uri!r}; use a local path, file:///abs/path or "
                          f"s3://bucket/prefix")
    return LocalStore(uri)


def open_file_uri(uri: str | os.PathLike[str]) -> tuple[Store, str]:
    """The store of the folder holding a single file's URI, and the file's key in it."""
    folder, _, name = os.fspath(uri).rstrip("/").rpartition("/")
    if not name:
        raise LocgenError(f"{uri!r} names no file; give a path or URI that ends in a file name")
    if folder in ("s3:/", "file:/"):
        raise LocgenError(f"{uri!r} names a bucket or root, not a file; add the file name")
    return open_store(folder or "."), name


def local_file(uri: str | os.PathLike[str], cache_dir: Path) -> Path:
    """A local path to the file at `uri`: the file itself, or a fresh download under `cache_dir`.

    A download lies in a folder named by the hash of its URI, so two URIs never share a copy. It is
    made anew each time: the object may have been replaced since (a retrained model, a newer extract).
    """
    store, key = open_file_uri(uri)
    if isinstance(store, LocalStore):
        path = store._path(key)
        if not path.is_file():
            raise LocgenError(f"{uri}: no such file; give an existing path or an s3:// URI")
        return path
    return store.download_to(key, cache_folder(cache_dir, uri) / key)


def cache_folder(cache_dir: str | os.PathLike[str], uri: str | os.PathLike[str]) -> Path:
    """The folder under `cache_dir` that holds the local copy of what `uri` names: named by the first
    16 hex digits of the sha256 of the URI, so two URIs never share a copy."""
    return Path(cache_dir) / hashlib.sha256(os.fspath(uri).encode()).hexdigest()[:16]


def split_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/some/prefix/` into ("bucket", "some/prefix"), validating the bucket name."""
    if not uri.startswith("s3://"):
        raise LocgenError(f"{uri!r} is not an S3 URI; write it as s3://bucket/prefix")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise LocgenError(f"invalid bucket {bucket!r} in {uri!r}; bucket names are 3-63 lowercase letters, "
                          f"digits, '.' and '-', as in s3://bucket/prefix")
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise LocgenError(f"invalid prefix in {uri!r}; use '/'-separated names without empty, '.' or "
                          f"'..' parts")
    return bucket, prefix


def _file_uri_path(uri: str) -> str:
    """The local path of a `file:///abs/path` (or `file://localhost/abs/path`) URI."""
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise LocgenError(f"invalid file URI {uri!r}; write it as file:///absolute/path")
    return unquote(parts.path)


def _check_key(key: str, prefix: bool = False) -> str:
    """Reject keys that are empty, absolute ('/' first) or climb out of the root with '..'."""
    parts = key.split("/")
    if prefix and parts[-1] == "":
        parts.pop()  # a prefix may be "" or end with '/', meaning "in this directory"
    if any(part in ("", ".", "..") for part in parts):
        raise LocgenError(f"invalid key {key!r}; use a relative path like 'tiles/000001.png' "
                          f"without empty, '.' or '..' parts")
    return key


def _tmp_name(name: str) -> str:
    """A unique temporary name next to `name`, recognised (and hidden) by `list_keys`."""
    return f"{name}.tmp-{uuid.uuid4().hex}"


def _is_tmp(key: str) -> bool:
    """Whether `key` is a temporary name made by `_tmp_name`."""
    return bool(_TMP_SUFFIX.search(key))


@contextmanager
def _os_errors(path: Path, reading: bool = True) -> Iterator[None]:
    """Turn OSError on a local file into one LocgenError line naming the path."""
    try:
        yield
    except FileNotFoundError as exc:
        if not reading:
            raise LocgenError(f"cannot write {exc.filename or path}: a parent is missing or not a "
                              f"directory; check the path") from None
        raise LocgenError(f"{exc.filename or path} does not exist; check the path, or run the stage that "
                          f"writes it first") from None
    except OSError as exc:
        raise LocgenError(f"cannot use {exc.filename or path}: {one_line(exc.strerror or exc)}; "
                          f"check the path, its permissions and free space") from exc


def _reraise(exc: OSError) -> None:
    """os.walk's error hook: an unreadable directory is an error, not an empty one."""
    raise exc


def _write_file_atomic(path: Path, chunks: Iterable[bytes]) -> None:
    """Write chunks to a temporary file in the same directory, then rename it over `path`.

    The same directory keeps the rename on one file system, where os.replace is atomic.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(_tmp_name(path.name))
    try:
        with open(tmp, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Store(ABC):
    """A directory-like place of objects addressed by relative '/'-separated keys."""

    uri: str

    def url(self, key: str) -> str:
        """The full URI (or path) of `key` under the root."""
        return f"{self.uri.rstrip('/')}/{_check_key(key)}"

    @abstractmethod
    def list_keys(self, prefix: str = "") -> set[str]:
        """Keys under the root that start with `prefix`, recursively, relative to the root."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's content; a missing key raises LocgenError naming its full URI."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key`, replacing it; readers see the old or the new object, never a part."""

    @abstractmethod
    def publish_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write `data` under a temporary key, then make it visible under `key` in one step."""

    @abstractmethod
    def download_to(self, key: str, path: Path) -> Path:
        """Copy the object to the local file `path` (created atomically) and return `path`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(Store):
    """A store in a local directory; `uri` is its absolute path."""

    def __init__(self, root: str | os.PathLike[str]):
        self.uri = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self._root = Path(self.uri)

    def _path(self, key: str) -> Path:
        return self._root / _check_key(key)

    def list_keys(self, prefix: str = "") -> set[str]:
        # Walk only the deepest directory the prefix names; the rest of the prefix filters names.
        _check_key(prefix, prefix=True)
        top = self._root / prefix.rpartition("/")[0]
        if not top.is_dir():
            return set()  # like an S3 prefix with nothing under it
        keys = set()
        with _os_errors(top):
            for dirpath, _, filenames in os.walk(top, onerror=_reraise):
                rel_dir = Path(dirpath).relative_to(self._root).as_posix()
                for name in filenames:
                    key = name if rel_dir == "." else f"{rel_dir}/{name}"
                    if key.startswith(prefix) and not _is_tmp(key):
                        keys.add(key)
        return keys

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        with _os_errors(path):
            return path.read_bytes()

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store `data` under `key` (tmp file + os.replace); `content_type` has no meaning on disk."""
        path = self._path(key)
        with _os_errors(path, reading=False):
            _write_file_atomic(path, [data])

    def publish_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Same as put_bytes: a local write is already a temporary file renamed over the key."""
        self.put_bytes(key, data, content_type)

    def download_to(self, key: str, path: Path) -> Path:
        """Copy the file, so the caller owns `path` whichever store it came from."""
        source = self._path(key)
        with _os_errors(source), source.open("rb") as file, _os_errors(Path(path), reading=False):
            _write_file_atomic(Path(path), iter(lambda: file.read(DOWNLOAD_CHUNK_BYTES), b""))
        return Path(path)


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach the S3 server; secrets stay out of repr()."""

    endpoint_url: str = DEFAULT_ENDPOINT_URL
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Config:
        """Read the AWS_* variables (see the module docstring); empty values count as unset."""
        env = {name: value for name, value in (os.environ if env is None else env).items() if value}
        config = cls(endpoint_url=env.get("AWS_ENDPOINT_URL", DEFAULT_ENDPOINT_URL).rstrip("/"),
                     access_key=env.get("AWS_ACCESS_KEY_ID"), secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
                     session_token=env.get("AWS_SESSION_TOKEN"), region=env.get("AWS_REGION", DEFAULT_REGION),
                     ca_bundle=env.get("AWS_CA_BUNDLE"))
        config.validate()
        return config

    def validate(self) -> None:
        """Fail early, naming the variable, on settings that cannot work."""
        parts = urlsplit(self.endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.username:
            raise LocgenError(f"AWS_ENDPOINT_URL={self.endpoint_url!r} is not an endpoint; write it as "
                              f"http://host:port or https://host:port (the scheme decides TLS)")
        if bool(self.access_key) != bool(self.secret_key):
            raise LocgenError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together; set both "
                              "(or neither, for anonymous access)")
        if self.ca_bundle and not os.path.isfile(self.ca_bundle):
            raise LocgenError(f"AWS_CA_BUNDLE={self.ca_bundle!r} is not a file; point it to the PEM "
                              f"certificate of the CA that signed the endpoint's certificate")


def _make_client(config: S3Config) -> Minio:
    """A Minio client with bounded retries and timeouts, so a dead server fails in seconds."""
    parts = urlsplit(config.endpoint_url)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=MAX_CONNECTIONS,
        cert_reqs="CERT_REQUIRED",
        ca_certs=config.ca_bundle or os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=RETRIES, backoff_factor=BACKOFF_FACTOR_S,
                              status_forcelist=[500, 502, 503, 504]),
    )
    try:
        # A fixed region spares a GetBucketLocation request before the first call on each bucket.
        return Minio(parts.netloc, access_key=config.access_key, secret_key=config.secret_key,
                     session_token=config.session_token, secure=parts.scheme == "https",
                     region=config.region, http_client=http)
    except ValueError as exc:
        raise LocgenError(f"AWS_ENDPOINT_URL={config.endpoint_url!r} is not usable: {one_line(exc)}; "
                          f"write it as http://host:port or https://host:port") from None


class S3Store(Store):
    """A store under `s3://bucket/prefix` on an S3-compatible server."""

    def __init__(self, uri: str, config: S3Config):
        self._bucket, self._prefix = split_s3_uri(uri)
        self.uri = f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"
        self._config = config
        self._minio: Minio | None = None
        self._minio_pid = 0
        self._lock = threading.Lock()
        self._bucket_seen = False

    def __getstate__(self) -> dict:
        # Connections and locks do not cross processes: each process opens its own client.
        return {"uri": self.uri, "config": self._config}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"], state["config"])

    def _client(self) -> Minio:
        """This process's client, created on first use (after a fork the parent's is not reused)."""
        with self._lock:
            if self._minio is None or self._minio_pid != os.getpid():
                self._minio = _make_client(self._config)
                self._minio_pid = os.getpid()
            return self._minio

    def _name(self, key: str) -> str:
        """The object name in the bucket for a key under the root."""
        return f"{self._prefix}/{key}" if self._prefix else key

    @contextmanager
    def _errors(self, uri: str) -> Iterator[None]:
        """Translate every minio and urllib3 failure on `uri` into one LocgenError line."""
        endpoint = f"object store {self._config.endpoint_url} (AWS_ENDPOINT_URL)"
        try:
            yield
        except S3Error as exc:
            raise self._s3_error(exc, uri) from exc
        except InvalidResponseError as exc:
            raise LocgenError(f"{endpoint} gave a non-S3 answer for {uri} ({one_line(exc, 200)}); "
                              f"check that the endpoint is an S3 server") from exc
        except ServerError as exc:
            raise LocgenError(f"{endpoint} failed on {uri}: {one_line(exc)}; retry later or check the "
                              f"server's logs") from exc
        except (urllib3.exceptions.HTTPError, MinioException) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, urllib3.exceptions.ResponseError):
                raise LocgenError(f"{endpoint} keeps failing on {uri} ({one_line(reason)}); retry later or "
                                  f"check the server's logs") from exc
            # urllib3 prefixes "HTTPConnection(host=..., port=...): ", which the endpoint already says.
            reason = re.sub(r"^\w+\(host='[^']*', port=\d+\): ", "", one_line(reason))
            hint = "check the endpoint and that the server runs"
            if "SSL" in reason or "certificate" in reason:
                hint = "check the endpoint; for a private CA set AWS_CA_BUNDLE to its certificate file"
            raise LocgenError(f"{endpoint} is unreachable: {reason}; {hint}") from exc

    def _s3_error(self, exc: S3Error, uri: str) -> LocgenError:
        """One line for an S3 error response, naming the variable or the command that fixes it."""
        endpoint = self._config.endpoint_url
        if exc.code == "NoSuchBucket":
            return self._missing_bucket()
        if exc.code == "NoSuchKey":
            # A HEAD answer has no body, so a missing bucket also reads as NoSuchKey: tell them apart.
            self._require_bucket()
            return LocgenError(f"{uri} does not exist; check the URI, or run the stage that writes it first")
        if exc.code in _CREDENTIAL_CODES:
            denied = f"access to {uri} denied by {endpoint} ({exc.code})"
            if not self._config.access_key:
                return LocgenError(f"{denied}; AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set: set "
                                   f"them to keys allowed on the bucket")
            return LocgenError(f"{denied}; check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
                               f"AWS_SESSION_TOKEN, and the bucket policy")
        if exc.code in _REGION_CODES:
            return LocgenError(f"{endpoint} refused {uri} ({exc.code}); set AWS_REGION to the bucket's "
                               f"region (now {self._config.region})")
        return LocgenError(f"{endpoint} refused {uri}: {exc.code}: {one_line(exc.message)}")

    def _missing_bucket(self) -> LocgenError:
        endpoint = self._config.endpoint_url
        return LocgenError(f"bucket {self._bucket!r} does not exist on {endpoint} (AWS_ENDPOINT_URL); "
                           f"create it first, e.g. `mc mb ALIAS/{self._bucket}` or "
                           f"`aws s3 mb s3://{self._bucket} --endpoint-url {endpoint}`")

    def _require_bucket(self) -> None:
        """Raise the missing-bucket error if the bucket is absent; checked once per store and process."""
        if self._bucket_seen:
            return
        with self._errors(f"s3://{self._bucket}"):
            if not self._client().bucket_exists(self._bucket):
                raise self._missing_bucket()
        self._bucket_seen = True

    def list_keys(self, prefix: str = "") -> set[str]:
        _check_key(prefix, prefix=True)
        # The root prefix ends with '/' so that s3://b/tiles never lists s3://b/tiles2/.
        root = f"{self._prefix}/" if self._prefix else ""
        with self._errors(f"{self.uri}/{prefix}"):
            # minio pages through ListObjectsV2 (1000 keys a page) while we iterate.
            objects = self._client().list_objects(self._bucket, prefix=root + prefix, recursive=True)
            keys = {obj.object_name[len(root):] for obj in objects}
        # Zero-byte "folder" markers some tools create end with '/': they are not objects of ours.
        return {key for key in keys if not key.endswith("/") and not _is_tmp(key)}

    def exists(self, key: str) -> bool:
        url = self.url(key)
        with self._errors(url):
            try:
                self._client().stat_object(self._bucket, self._name(key))
                return True
            except S3Error as exc:
                if exc.code != "NoSuchKey":
                    raise
            self._require_bucket()
            return False

    def get_bytes(self, key: str) -> bytes:
        with self._errors(self.url(key)):
            response = self._client().get_object(self._bucket, self._name(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """One PUT: S3 makes an object visible only once all of it has arrived."""
        with self._errors(self.url(key)):
            self._put(self._name(key), data, content_type)

    def _put(self, name: str, data: bytes, content_type: str) -> None:
        self._client().put_object(self._bucket, name, io.BytesIO(data), len(data), content_type=content_type)

    def publish_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """PUT `<key>.tmp-<uuid>`, copy it server-side to `key` (content type kept), remove the temporary."""
        name = self._name(key)
        tmp = _tmp_name(name)
        with self._errors(self.url(key)):
            try:
                self._put(tmp, data, content_type)
                self._client().copy_object(self._bucket, name, CopySource(self._bucket, tmp))
            finally:
                # Best effort: if the server is gone this fails too, and the first error is the one to report.
                with suppress(MinioException, urllib3.exceptions.HTTPError):
                    self._client().remove_object(self._bucket, tmp)

    def download_to(self, key: str, path: Path) -> Path:
        path = Path(path)
        with self._errors(self.url(key)), _os_errors(path, reading=False):
            response = self._client().get_object(self._bucket, self._name(key))
            try:
                _write_file_atomic(path, response.stream(DOWNLOAD_CHUNK_BYTES))
            finally:
                response.close()
                response.release_conn()
        return path
