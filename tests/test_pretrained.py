"""The bundled pretrained generator: small, says what it was trained on, paints markers on ground it never saw."""

import numpy as np
import pytest
import torch
from conftest import HELSINKI_PBF, KOTKA_PBF

from components.core.geo import LonLatBounds
from components.core.storage import open_store
from components.core.style import STYLE_VERSION, style_sha256
from components.core.tileset import decode_tile, fetch_all, read_manifest
from components.pretrained import BUNDLED_GENERATOR
from components.render.job import RenderSettings, render
from components.train.generator_file import load_generator
from components.train.validation import markers_per_tile, translate

# The tile set it was trained on (`make pretrained`), by the sha256 of its manifest.
TRAINING_MANIFEST_SHA256 = "a707133489429d247e47ed5e6ef1da2f05a26e98c31a3b213715afbdb4401490"
# No training pair touched this box (render --holdout): Helsinki streets the model never saw.
HOLDOUT = LonLatBounds(24.9351, 60.1641, 24.9535, 60.1680)
MARKER_RADIUS_PX = 5.0


@pytest.fixture(scope="module")
def bundled():
    return load_generator()


def test_is_small_and_names_its_lineage(bundled):
    _, metadata = bundled
    assert BUNDLED_GENERATOR.stat().st_size < 5_000_000
    assert metadata["data_manifest_sha256"] == TRAINING_MANIFEST_SHA256
    assert metadata["cities"] == ["helsinki"] and metadata["marker_radius_px"] == MARKER_RADIUS_PX
    assert (metadata["size_px"], metadata["m_per_px"]) == (256, 2.0)
    # Trained on today's map style: a change of style means training it again (make pretrained).
    assert (metadata["style_version"], metadata["style_sha256"]) == (STYLE_VERSION, style_sha256())
    assert metadata["validation"]["dots_per_tile"] > 0


@pytest.mark.parametrize("area", ["helsinki-holdout", "kotka"])
def test_paints_markers_at_about_the_real_rate_on_unseen_ground(bundled, area, tmp_path):
    generator, metadata = bundled
    if area == "kotka":  # another town, never seen
        settings = RenderSettings(osm=[str(KOTKA_PBF)], out=str(tmp_path), center=(26.95, 60.53), grid=5,
                                  city="kotka", progress=False)
    else:
        settings = RenderSettings(osm=[str(HELSINKI_PBF)], out=str(tmp_path), bbox=HOLDOUT, city="helsinki",
                                  progress=False)
    render(settings)
    store = open_store(str(tmp_path))
    rows = read_manifest(store)
    tiles = np.stack([decode_tile(png, row["path"], row)
                      for row, png in zip(rows, fetch_all(store, [row["path"] for row in rows]))])
    generated = translate(generator, torch.from_numpy(tiles).permute(0, 3, 1, 2), torch.device("cpu"))
    painted = markers_per_tile(generated, np.pi * MARKER_RADIUS_PX ** 2)
    real = metadata["validation"]["real_dots_per_tile"]  # lone markers per real Helsinki tile
    assert real / 4 <= painted <= real * 2
