"""sha256 of source files: the provenance every artifact records."""

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    with Path(path).open("rb") as file:  # OSM extracts can be gigabytes: hash in chunks, not in memory
        return hashlib.file_digest(file, "sha256").hexdigest()
