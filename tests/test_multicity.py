"""Several cities in one training set: each city rendered on its own (its OSM data, its locations,
its held-out box), the tile sets trained on together. Real renders of the two bundled extracts."""

import pytest
from conftest import HELSINKI_PBF, KOTKA_PBF

from components.core.errors import LocgenError
from components.core.storage import open_store
from components.core.tileset import read_manifest
from components.render.job import RenderSettings, render
from components.train.data import load_tile_sets
from components.train.generator_file import GENERATOR_KEY, load_generator
from locgen.cli import main

HELSINKI_LOCATIONS = ["osm:amenity=bicycle_rental,amenity=bicycle_parking"]
KOTKA_LOCATIONS = ["osm:highway=bus_stop"]  # Kotka's extract has no bicycle points: any located feature will do


def _pairs(tmp_path, name: str, osm, locations: list[str], **settings) -> str:
    out = str(tmp_path / name)
    render(RenderSettings(osm=[str(osm)], out=out, pairs=10, city=name, locations=locations, sampling="area",
                          marker_radius_px=5.0, progress=False, **settings))
    return out


def test_two_cities_train_as_one_set_and_keep_each_tiles_city_georeference_and_sources(tmp_path):
    helsinki = _pairs(tmp_path, "helsinki", HELSINKI_PBF, HELSINKI_LOCATIONS)
    kotka = _pairs(tmp_path, "kotka", KOTKA_PBF, KOTKA_LOCATIONS)
    alone = [load_tile_sets([uri], validation_share=0.2) for uri in (helsinki, kotka)]
    both = load_tile_sets([helsinki, kotka], validation_share=0.2)
    assert len(both.a) == sum(len(data.a) for data in alone) == 20
    assert len(both.b) + len(both.held_out_b) == 20
    assert len(both.held_out_b) == sum(len(data.held_out_b) for data in alone)
    assert both.rows == alone[0].rows + alone[1].rows
    assert {row["city"] for row in both.rows} == {"helsinki", "kotka"}
    for uri, city in ((helsinki, "helsinki"), (kotka, "kotka")):
        written = read_manifest(open_store(uri))
        assert [row for row in both.rows if row["city"] == city] == written  # bounds, sources, points as written
    osm_sources = {row["city"]: row["sources"][0]["uri"] for row in both.rows}
    assert osm_sources == {"helsinki": str(HELSINKI_PBF), "kotka": str(KOTKA_PBF)}
    assert both.manifest_sha256 not in {data.manifest_sha256 for data in alone}


def test_training_sets_that_a_model_cannot_learn_together_are_named(tmp_path):
    helsinki = _pairs(tmp_path, "helsinki", HELSINKI_PBF, HELSINKI_LOCATIONS)
    coarse = _pairs(tmp_path, "kotka", KOTKA_PBF, KOTKA_LOCATIONS, m_per_px=3.0)
    with pytest.raises(LocgenError, match=rf"--data {coarse}: a ground resolution of 3, but {helsinki} has 2; "
                                          "render every training set with one --m-per-px"):
        load_tile_sets([helsinki, coarse], validation_share=0.2)
    with pytest.raises(LocgenError, match=rf"--data {tmp_path / 'nowhere'}: no manifest.jsonl"):
        load_tile_sets([helsinki, str(tmp_path / "nowhere")], validation_share=0.2)


def test_locgen_train_takes_several_tile_sets_and_names_them_in_its_lineage(tmp_path, capsys):
    helsinki = _pairs(tmp_path, "helsinki", HELSINKI_PBF, HELSINKI_LOCATIONS)
    kotka = _pairs(tmp_path, "kotka", KOTKA_PBF, KOTKA_LOCATIONS)
    out = tmp_path / "model"
    assert main(["train", "--data", helsinki, "--data", kotka, "--out", str(out), "--steps", "2", "--batch-size",
                 "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    _, metadata = load_generator(str(out / GENERATOR_KEY))
    assert metadata["data"] == [helsinki, kotka]
    assert metadata["data_manifest_sha256"] == load_tile_sets([helsinki, kotka], 0.05).manifest_sha256


def test_the_quality_benchmark_names_every_file_it_lacks_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from benchmarks import bench_quality

    (tmp_path / "osm").mkdir()
    (tmp_path / "osm" / "london-city-2020.osm.pbf").write_bytes(b"")  # present: not named
    monkeypatch.setattr(bench_quality, "DATA", tmp_path)
    monkeypatch.setattr("sys.argv", ["bench_quality.py", "--model", "bundled", "--markdown", str(tmp_path / "t.md")])
    assert bench_quality.main() == 2
    lacking = ("osm/muenchen-altstadt-2020.osm.pbf, osm/paris-bss-roads.osm.pbf, "
               "osm/sf-mission-roads-2017.osm.bz2, positions/paris-velib-station_information-2022.json, "
               "positions/sf-baywheels-station_information-2019-10-03.json")
    assert capsys.readouterr() == ("", f"bench_quality: error: {tmp_path} lacks {lacking}; the benchmark needs "
                                       "../shared/data (see its README)\n")
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["london-city-2020.osm.pbf", "osm"]
