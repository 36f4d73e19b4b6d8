"""Provenance every artifact records: the sha256 of its sources, and the OSM attribution."""

import hashlib
import os
import subprocess
from pathlib import Path

# ODbL: every tile, preview and data set made from OpenStreetMap data carries this line.
OSM_ATTRIBUTION = "© OpenStreetMap contributors"


def file_sha256(path: Path) -> str:
    with Path(path).open("rb") as file:  # OSM extracts can be gigabytes: hash in chunks, not in memory
        return hashlib.file_digest(file, "sha256").hexdigest()


def git_commit() -> str:
    """The project's git commit: $LOCGEN_GIT_COMMIT (set in the images at build time), else the
    checkout's HEAD with "-dirty" when tracked files differ from it, else "unknown" (an installed
    copy outside git)."""
    commit = os.environ.get("LOCGEN_GIT_COMMIT")
    if commit:
        return commit
    try:
        head, changes = (subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                                        text=True, timeout=10, check=True).stdout.strip()
                         for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"]))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if changes else "")
