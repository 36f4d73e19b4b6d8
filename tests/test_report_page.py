"""The report page: made from a real run of the stages on Helsinki's held-out box (render, generate with the
bundled model, extract with a preview, evaluate against the real bicycle points), and rendered in a real browser
(headless Chromium from Debian's packages) where one is installed."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import HELSINKI_PBF
from PIL import Image

from components.core.geo import Bounds3857, contains, lonlat_to_3857
from components.core.pngmeta import read_png_text
from components.core.provenance import OSM_ATTRIBUTION
from components.extract.preview import PREVIEW_TEXT_KEY
from components.extract.report_page import report_page
from components.sources.locations import load_locations
from locgen.cli import main
from pipeline.pipelines import SAMPLE_HOLDOUT, SAMPLE_LOCATIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TRUTH = SAMPLE_LOCATIONS[0]
# metrics.jsonl rows as train writes them: losses every log_every steps, a validation at each checkpoint
TRAINING = [*({"step": step, "loss_d": 0.25, "loss_g_gan": 0.3 - step / 1e4, "loss_nce": 2.0 - step / 1e3,
               "lr": 2e-4, "time": 0.0} for step in range(50, 1001, 50)),
            *({"validation": {"step": step, "dots_per_tile": 9.0, "real_dots_per_tile": 9.3, "place_score": score}}
              for step, score in ((0, 0.38), (500, 0.41), (1000, 0.40)))]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(the page's file, the preview PNG, the real points on the preview)"""
    folder = tmp_path_factory.mktemp("report")
    tiles, generated, points, preview = (str(folder / name) for name in ("tiles", "generated", "points.csv",
                                                                         "preview.png"))
    for argv in (["render", "--osm", str(HELSINKI_PBF), "--bbox", SAMPLE_HOLDOUT, "--out", tiles],
                 ["generate", "--tiles", tiles, "--out", generated],
                 ["extract", "--tiles", generated, "--out", points, "--preview", preview],
                 ["evaluate", "--generated", points, "--truth", TRUTH, "--bbox", SAMPLE_HOLDOUT, "--osm",
                  str(HELSINKI_PBF), "--out", str(folder / "report.json")]):
        assert main(argv) == 0
    truth = np.array([(p.lon, p.lat) for p in load_locations(TRUTH, osm_files=[str(HELSINKI_PBF)]).points])
    png = (folder / "preview.png").read_bytes()
    page = folder / "report.html"
    page.write_text(report_page("locgen: Helsinki's held-out box", json.loads((folder / "report.json").read_text()),
                                png, truth, TRAINING))
    georef = json.loads(read_png_text(png)[PREVIEW_TEXT_KEY])
    x_3857, y_3857 = lonlat_to_3857(truth[:, 0], truth[:, 1])
    on_preview = contains(Bounds3857(*georef["bounds_3857"]), x_3857, y_3857)
    return page, png, int(on_preview.sum())


def test_the_page_holds_the_map_with_the_real_points_the_metrics_the_training_and_the_attribution(made):
    page, png, on_preview = made
    text = page.read_text()
    assert 0 < on_preview == text.count("fill='#ff8c00' stroke='white'")  # each real point on the map, once
    assert text.count("<tr>") == 1 + 12  # the header, then the twelve metrics of the model and each baseline
    assert text.count("<polyline") == 3 and text.count("place score 0.") == 3  # three losses, three checkpoints
    assert OSM_ATTRIBUTION in text and "<script" not in text and "http" not in text.replace("http://www.w3.org", "")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium): the "
                                             "page is checked as text only")
def test_the_page_renders_in_chromium_with_no_console_error(made, tmp_path):
    page, _, _ = made
    shot = tmp_path / "shot.png"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1000,1600",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not [line for line in console if re.search(r"error|Uncaught", line, re.I)], console
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert rgb.std() > 20  # not a blank page
    orange = (abs(rgb[..., 0] - 255) < 40) & (abs(rgb[..., 1] - 140) < 40) & (rgb[..., 2] < 60)
    assert orange.sum() > 20  # the real points, drawn over the map
