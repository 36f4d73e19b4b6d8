"""Provenance every artifact records: the sha256 of its sources, and the OSM attribution."""

import hashlib
from pathlib import Path

# ODbL: every tile, preview and data set made from OpenStreetMap data carries this line.
OSM_ATTRIBUTION = "© OpenStreetMap contributors"


def file_sha256(path: Path) -> str:
    with Path(path).open("rb") as file:  # OSM extracts can be gigabytes: hash in chunks, not in memory
        return hashlib.file_digest(file, "sha256").hexdigest()
