"""Shared test fixtures: paths to the bundled sample data and to ../shared/data, and a stand-in generator."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from s3server import S3Server, s3_server

from components.train.data import to_model_input

# Hypothesis checks by default that each example runs within 200 ms and that generating data is not
# too slow: wall-clock limits that a busy machine can break. Tests state their examples, not their speed.
settings.register_profile("locgen", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("locgen")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_OSM = PROJECT_ROOT / "data" / "osm"
HELSINKI_PBF = SAMPLE_OSM / "helsinki-center.osm.pbf"
KOTKA_PBF = SAMPLE_OSM / "kotka-karhula.osm.pbf"
# Real feeds we may test on but never ship (see ../shared/data/README.md). A user's fresh clone has
# no ../shared: the tests that need it are skipped with that reason.
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real third-party feeds are not shipped with the project)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3 server (moto) on 127.0.0.1 with one bucket, for the whole test session."""
    with s3_server() as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch) -> S3Server:
    """Point the AWS_* variables at the test server."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


class ReplayGenerator(torch.nn.Module):
    """A 'generator' that returns given uint8 (N, 3, H, W) images in turn, whatever its input."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images, self.served = images, 0

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        out = to_model_input(self.images[self.served:self.served + len(tiles)])
        self.served += len(tiles)
        return out
