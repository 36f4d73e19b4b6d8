"""The report as one self-contained web page (`report.html`, beside report.md, and the Kubeflow UI's HTML artifact):
the area's map with the generated points (blue rings, drawn on the preview) and the real ones (orange dots),
the evaluation's verdict and metrics against the baselines, the training's losses and validation over the
steps, and the OpenStreetMap attribution. Plain HTML and SVG: no script, nothing fetched."""

from __future__ import annotations

import base64
import html

import numpy as np

from components.core.geo import lonlat_to_3857
from components.core.pngmeta import read_png_text
from components.core.provenance import OSM_ATTRIBUTION
from components.core.tileset import json_object
from components.extract.preview import PREVIEW_TEXT_KEY

TRUTH_RGB = "#ff8c00"  # orange: apart from the blue rings and the magenta dots
LOSS_COLOURS = {"loss_d": "#1f77b4", "loss_g_gan": "#d62728", "loss_nce": "#2ca02c"}
PLOT_W, PLOT_H, MARGIN = 640, 220, 40


def report_page(title: str, report: dict, preview_png: bytes | None, truth_lonlat: np.ndarray | None,
                training: list[dict] | None) -> str:
    """The page: `report` as evaluate wrote it (report.json), the preview of locgen extract, the real points
    (lon/lat) and the training's metrics.jsonl rows (None: not known for this model)."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p><b>Verdict:</b> {html.escape(report['verdict']['line'])}</p>"]
    if preview_png is not None:
        parts += ["<h2>The points on the map</h2>", _map_svg(preview_png, truth_lonlat),
                  f"<p>Blue rings: the generated points. <span style='color:{TRUTH_RGB}'>Orange dots</span>: the "
                  "real ones.</p>"]
    parts += ["<h2>Against the baselines</h2>", _metrics_table(report), "<h2>Training</h2>",
              _training_svg(training) if training else "<p>No training record beside this model.</p>",
              f"<p>{html.escape(OSM_ATTRIBUTION)}</p>"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
            "</style></head><body>" + "".join(parts) + "</body></html>")


def _map_svg(preview_png: bytes, truth_lonlat: np.ndarray | None) -> str:
    """The preview as an SVG image, with the real points over it where the preview says where it lies."""
    georef = json_object(read_png_text(preview_png).get(PREVIEW_TEXT_KEY, ""))
    image = base64.b64encode(preview_png).decode()
    width, height = georef["size_px"] if georef else (800, 800)
    dots = ""
    if georef and truth_lonlat is not None and len(truth_lonlat):
        west, _, _, north = georef["bounds_3857"]
        x_3857, y_3857 = lonlat_to_3857(truth_lonlat[:, 0], truth_lonlat[:, 1])
        cols, rows = (x_3857 - west) / georef["mpp_3857"], (north - y_3857) / georef["mpp_3857"]
        dots = "".join(f"<circle cx='{col:.1f}' cy='{row:.1f}' r='4' fill='{TRUTH_RGB}' stroke='white'/>"
                       for col, row in zip(cols, rows) if 0 <= col <= width and 0 <= row <= height)
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' style='max-width:100%'>"
            f"<image href='data:image/png;base64,{image}' width='{width}' height='{height}'/>{dots}</svg>")


def _metrics_table(report: dict) -> str:
    names = list(report["model"]["metrics"])
    columns = {"model": report["model"]["metrics"],
               **{name: scores["metrics"] for name, scores in report["baselines"].items()}}
    header = "<tr><th></th>" + "".join(f"<th>{html.escape(name)}</th>" for name in columns) + "</tr>"
    body = "".join("<tr><th>" + html.escape(name) + "</th>" + "".join(
        f"<td>{_number(metrics.get(name))}</td>" for metrics in columns.values()) + "</tr>" for name in names)
    return f"<table>{header}{body}</table>"


def _number(value) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else html.escape(str(value))


def _training_svg(rows: list[dict]) -> str:
    """The losses over the steps (lines), and each checkpoint's place score (dots, on a 0-1 scale of its own)."""
    losses = [row for row in rows if "loss_nce" in row]
    checks = [row["validation"] for row in rows if isinstance(row.get("validation"), dict)]
    last_step = max([row["step"] for row in losses] + [check["step"] for check in checks] + [1])
    top = max([row[name] for row in losses for name in LOSS_COLOURS if name in row] + [1e-9])

    def x(step: float) -> float:
        return MARGIN + (PLOT_W - 2 * MARGIN) * step / last_step

    def y(share: float) -> float:
        return PLOT_H - MARGIN + (2 * MARGIN - PLOT_H) * share

    lines = "".join(
        f"<polyline fill='none' stroke='{colour}' points='"
        + " ".join(f"{x(row['step']):.1f},{y(row[name] / top):.1f}" for row in losses if name in row)
        + f"'><title>{name}</title></polyline>" for name, colour in LOSS_COLOURS.items())
    dots = "".join(f"<circle cx='{x(check['step']):.1f}' cy='{y(check['place_score']):.1f}' r='4' fill='black'>"
                   f"<title>step {check['step']}: place score {check['place_score']:.3f}</title></circle>"
                   for check in checks if check.get("place_score") is not None)
    legend = " ".join(f"<tspan fill='{colour}'>{name}</tspan>" for name, colour in LOSS_COLOURS.items())
    return (f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {PLOT_W} {PLOT_H}' style='max-width:100%'>"
            f"<rect x='{MARGIN}' y='{MARGIN}' width='{PLOT_W - 2 * MARGIN}' height='{PLOT_H - 2 * MARGIN}' "
            f"fill='none' stroke='#999'/>{lines}{dots}"
            f"<text x='{MARGIN}' y='{MARGIN - 8}' font-size='12'>{legend} (0 to {top:.3g}); "
            f"<tspan fill='black'>● place score</tspan> (0 to 1)</text>"
            f"<text x='{PLOT_W - MARGIN}' y='{PLOT_H - 10}' font-size='12' text-anchor='end'>step {last_step}</text>"
            "</svg>")
