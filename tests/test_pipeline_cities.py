"""The training and end-to-end pipelines take a list of cities: one render task per city in a ParallelFor over
`cities`, one train task on all of them (compiled, and a real kfp.local run on two cities), held-out boxes
evaluated city by city, and a bad `cities` refused in one line before any stage runs."""

import json

import pytest
import yaml
from conftest import HELSINKI_PBF, KOTKA_PBF

from components.core.errors import LocgenError
from components.core.storage import open_store
from locgen.cli import main
from pipeline.local import PIPELINE_DIR, check_parameters, run_locally
from pipeline.pipelines import SAMPLE_CITY, build_pipelines
from pipeline.steps import held_out_cities_step

HELSINKI = {**SAMPLE_CITY, "osm": str(HELSINKI_PBF)}
KOTKA = {"city": "kotka", "osm": str(KOTKA_PBF), "locations": ["osm:highway=bus_stop"]}  # no held-out box


@pytest.fixture(scope="module")
def pipelines() -> dict:
    return build_pipelines()


def _spec(name: str) -> dict:
    return next(yaml.safe_load_all((PIPELINE_DIR / f"{name}.yaml").read_text()))


def _loops(spec: dict, dag: dict) -> dict:
    """The for-loop tasks of a DAG, by name: (the task, its component's tasks)."""
    return {name: (task, spec["components"][task["componentRef"]["name"]]["dag"]["tasks"])
            for name, task in dag["tasks"].items() if "parameterIterator" in task}


@pytest.mark.parametrize("name", ["train", "end-to-end"])
def test_each_city_is_rendered_by_one_task_in_a_loop_over_cities_and_trained_on_together(name):
    spec = _spec(name)
    root = spec["root"]["dag"]
    loops = _loops(spec, root)
    over_cities = {loop: tasks for loop, (task, tasks) in loops.items()
                   if task["inputs"]["parameters"][task["parameterIterator"]["items"]["inputParameter"]]
                   == {"componentInputParameter": "cities"}}
    assert len(over_cities) == 1
    ((loop, tasks),) = over_cities.items()
    assert list(tasks) == ["render-city"]
    assert tasks["render-city"]["inputs"]["parameters"]["city"]["componentInputParameter"].endswith("-loop-item")
    for consumer in ("train-generator", "export-onnx"):  # the tile sets of every city, collected
        source = root["tasks"][consumer]["inputs"]["artifacts"]["training_tiles"]["taskOutputArtifact"]
        assert source == {"outputArtifactKey": "pipelinechannel--render-city-tiles", "producerTask": loop}
        inputs = spec["components"][f"comp-{consumer}"]["inputDefinitions"]["artifacts"]
        assert inputs["training_tiles"]["isArtifactList"] is True
    for _, (_, tasks) in loops.items():  # kfp.local runs no loop inside a loop
        assert not any(task.startswith("for-loop") for task in tasks)
    assert spec["root"]["inputDefinitions"]["parameters"]["cities"]["defaultValue"] == [SAMPLE_CITY]
    assert not {"city", "osm", "locations", "holdout"} & set(spec["root"]["inputDefinitions"]["parameters"])


def test_end_to_end_evaluates_each_held_out_box_in_one_loop_and_returns_the_list():
    spec = _spec("end-to-end")
    root = spec["root"]["dag"]
    held_out = {loop: tasks for loop, (task, tasks) in _loops(spec, root).items()
                if "held-out-cities" in json.dumps(task["inputs"])}
    ((loop, tasks),) = held_out.items()
    assert sorted(tasks) == ["city-fields", "extract-points-2", "generate-tiles-2", "render-tiles-2"]
    extract = tasks["extract-points-2"]["inputs"]["parameters"]
    assert extract["truth"]["taskOutputParameter"] == {"outputParameterKey": "locations", "producerTask": "city-fields"}
    assert extract["truth_bbox"]["taskOutputParameter"]["outputParameterKey"] == "holdout"
    assert tasks["generate-tiles-2"]["inputs"]["parameters"]["shards"]["runtimeValue"]["constant"] == 1
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert outputs["holdout_points"]["isArtifactList"] is True and "isArtifactList" not in outputs["target_points"]
    assert root["outputs"]["artifacts"]["holdout_points"]["artifactSelectors"][0]["producerSubtask"] == loop


def test_the_held_out_evaluation_skips_cities_without_a_box():
    assert held_out_cities_step([HELSINKI, KOTKA, {**KOTKA, "city": "karhula", "holdout": ""}]) == [HELSINKI]


@pytest.mark.parametrize("cities, message", [
    ("helsinki", 'cities "helsinki": not a JSON list; give a list of cities, like [{"city": '),
    ({"city": "helsinki"}, 'cities {"city": "helsinki"}: not a JSON list'),
    ([], "cities []: give one or more cities to train on"),
    ([HELSINKI, "kotka"], 'cities[1] "kotka": not an object; give each city as {"city": '),
    ([{**HELSINKI, "bbox": "1,2,3,4"}], "cities[0] (helsinki): unknown keys ['bbox']; an item takes city, osm, "),
    ([{"city": "kotka", "osm": str(KOTKA_PBF)}], "cities[0] (kotka): no locations; give each of city, osm, locations"),
    ([HELSINKI, {"osm": str(KOTKA_PBF), "locations": ["osm:highway=bus_stop"]}], "cities[1]: no city; give each of"),
    ([HELSINKI, {**KOTKA, "osm": "/nowhere/kotka.osm.pbf"}],
     "cities[1] (kotka): osm /nowhere/kotka.osm.pbf: no such file; give an .osm.pbf file or an s3:// URI"),
    ([{**KOTKA, "locations": "osm:highway=bus_stop"}],
     'cities[0] (kotka): locations "osm:highway=bus_stop": give a list of location sources'),
    ([{**KOTKA, "locations": []}], "cities[0] (kotka): locations: give one or more location sources"),
    ([{**HELSINKI, "holdout": "24.93,60.16,24.95"}],
     "cities[0] (helsinki): holdout: '24.93,60.16,24.95' is not WEST,SOUTH,EAST,NORTH"),
    ([HELSINKI, {**KOTKA, "city": "Helsinki"}],
     "cities[1] (Helsinki): the same city as cities[0] (helsinki); give each city once"),
    ([{**KOTKA, "city": "+"}], 'cities[0] (+): city "+": give a name with letters or digits'),
])
@pytest.mark.parametrize("pipeline", ["train", "end-to-end"])
def test_a_bad_cities_is_refused_in_one_line_naming_the_item(pipelines, pipeline, cities, message):
    with pytest.raises(LocgenError) as refused:
        check_parameters(pipelines[pipeline], {"cities": cities})
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_cities_that_are_fine(pipelines):
    train, end_to_end = pipelines["train"], pipelines["end-to-end"]
    check_parameters(train, {"cities": [KOTKA]})  # no held-out box: training alone needs none
    check_parameters(train, {"cities": [HELSINKI, {**KOTKA, "holdout": ""}]})
    check_parameters(end_to_end, {"cities": [HELSINKI, KOTKA]})  # one box is enough to evaluate on
    check_parameters(train, {"cities": [{**KOTKA, "osm": "s3://osm/kotka.osm.pbf"}]}, local_files=False)
    with pytest.raises(LocgenError, match=r"^cities: no city has a holdout; give at least one a held-out box"):
        check_parameters(end_to_end, {"cities": [KOTKA]})


def test_locgen_run_refuses_a_bad_cities_with_exit_2_before_any_stage(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "--store", str(tmp_path), "--param", 'cities=[{"city": "kotka", "osm": "kotka.pbf"}]'])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1
    assert error.startswith("locgen: error: cities[0] (kotka): no locations;")
    assert not (tmp_path / "kfp").exists()


def test_the_training_pipeline_trains_one_model_on_two_cities_locally(pipelines, tmp_path):
    store = tmp_path / "store"
    parameters = {"cities": [KOTKA, HELSINKI], "pairs": 3, "steps": 2, "store": str(store)}
    model = run_locally(pipelines["train"], parameters, tmp_path / "kfp").output
    artifacts = {}
    for executor_output in (tmp_path / "kfp").rglob("executor_output.json"):
        for name, listing in json.loads(executor_output.read_text()).get("artifacts", {}).items():
            artifacts.setdefault(f"{executor_output.parent.name}/{name}", []).append(
                listing["artifacts"][0]["metadata"])
    tile_sets = {meta["city"]: meta for meta in artifacts["render-city/tiles"]}  # one render task a city
    assert sorted(tile_sets) == ["helsinki", "kotka"]
    for city, meta in tile_sets.items():
        assert meta["uri"].startswith(f"{store}/{city}/tiles/") and len(meta["area"]) == 4
        assert {"a", "b"} <= set(meta["domains"]) and meta["tiles"] >= 6  # 3 pairs (Helsinki: its held-out box too)
        assert open_store(meta["uri"]).exists("manifest.jsonl") and meta["attribution"]
    (generator,) = artifacts["train-generator/generator"]
    assert generator["city"] == "helsinki+kotka" and generator["cities"] == ["helsinki", "kotka"]
    assert generator["parents"] == [tile_sets["helsinki"]["uri"], tile_sets["kotka"]["uri"]]
    assert generator["training_manifest_sha256"] == [tile_sets[city]["manifest_sha256"] for city in generator["cities"]]
    assert {source["uri"] for source in generator["sources"]} >= {str(HELSINKI_PBF), str(KOTKA_PBF)}
    assert generator["uri"].startswith(f"{store}/helsinki-kotka/runs/") and generator["steps"] == 2
    assert model.metadata["city"] == "helsinki+kotka" and model.metadata["cities"] == ["helsinki", "kotka"]
    assert model.metadata["parents"] == [generator["uri"], tile_sets["helsinki"]["uri"], tile_sets["kotka"]["uri"]]
    assert model.metadata["uri"].startswith(f"{store}/helsinki-kotka/runs/")
