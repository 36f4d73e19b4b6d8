"""The Kubeflow pipelines: fresh compiled YAML, the cluster settings where stated, a real kfp.local run with
lineage, and bad parameters refused before any stage runs."""

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import HELSINKI_PBF, KOTKA_PBF
from google.protobuf import json_format

from components.core.errors import LocgenError
from components.core.logs import log_to_stderr
from components.core.provenance import OSM_ATTRIBUTION, git_commit
from components.core.storage import open_store
from components.core.tileset import MANIFEST_KEY, merge_manifest_parts, read_manifest
from components.infer.job import generate
from components.infer.settings import GenerateSettings
from components.pretrained import BUNDLED_MODEL
from components.render.job import RenderSettings, render
from locgen.cli import main
from pipeline.components import train_pod_gpus
from pipeline.images import STAGE_IMAGES
from pipeline.local import PIPELINE_DIR, check_parameters, compile_all, run_sample
from pipeline.pipelines import OBJECT_STORE_SECRET, SAMPLE_CITY, build_pipelines

GPU_COMPONENTS = {"train-generator", "generate-tiles"}
# A small end-to-end run: 12 training pairs, 4 training steps, a 2 x 2 grid of Kotka, render and infer in 2 shards.
SMALL = {"pairs": 12, "steps": 4, "target_grid": 2, "shards": 2}


def _documents(path) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of a compiled pipeline file."""
    documents = list(yaml.safe_load_all(path.read_text()))
    return documents[0], documents[1] if len(documents) > 1 else {}


def test_committed_yaml_is_what_compile_writes(tmp_path):
    written = compile_all(tmp_path)
    assert sorted(path.name for path in written) == sorted(f"{name}.yaml" for name in build_pipelines())
    for path in written:
        committed = PIPELINE_DIR / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run locgen compile"


STAGE_OF_COMPONENT = {"shard-indices": "render", "render-tiles": "render", "render-city": "render",
                      "held-out-cities": "render", "city-fields": "render", "collect-tiles": "render",
                      "train-pod-gpus": "render", "train-generator": "train", "export-onnx": "export",
                      "decide-promotion": "export", "promote-model": "render", "generate-tiles": "infer",
                      "extract-points": "extract"}
# and collect-tiles after a render, not after generate-tiles
CACHED = {"shard-indices", "render-tiles", "render-city", "held-out-cities", "city-fields", "train-pod-gpus"}


def _component(name: str) -> str:
    """exec-render-tiles-2 / comp-render-tiles-2 / render-tiles-2 -> render-tiles."""
    return re.sub(r"^(exec|comp)-|-\d+$", "", name)


def _all_tasks(spec: dict) -> dict:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_each_stage_has_its_own_image_and_gpu_secret_toleration_and_caching_settings():
    spec, platform = _documents(PIPELINE_DIR / "end-to-end.yaml")
    executors = spec["deploymentSpec"]["executors"]
    images = {}
    for name, executor in executors.items():
        stage = STAGE_OF_COMPONENT[_component(name)]
        assert executor["container"]["image"] == f"localhost:5000/locgen/{stage}:0.1.0", name
        images[stage] = executor["container"]["image"]
    assert len(set(images.values())) == len(STAGE_IMAGES) == len(images)  # five stages, five distinct images
    for name, executor in executors.items():
        resources = executor["container"]["resources"]
        gpu = _component(name) in GPU_COMPONENTS
        assert ("accelerator" in resources) == gpu, name
        if gpu:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["cpuRequest"] and resources["memoryLimit"]
        config = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][name]
        assert config["secretAsEnv"][0]["secretName"] == OBJECT_STORE_SECRET
        assert {entry["envVar"] for entry in config["secretAsEnv"][0]["keyToEnv"]} >= {
            "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert ("tolerations" in config) == gpu, name
    tasks = _all_tasks(spec)
    for name, task in tasks.items():
        if name.startswith(("for-loop", "condition")):
            continue
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        after_render = _component(name) == "collect-tiles" and "render" in str(task["inputs"])
        assert cached == (_component(name) in CACHED or after_render), name
    assert {"train-generator", "export-onnx"} <= {_component(name) for name in tasks}


def test_every_task_has_a_name_retries_and_a_deadline_and_gpu_tasks_a_shared_memory():
    from pipeline.pipelines import RETRY, SHM_SIZE, TASKS

    spec, platform = _documents(PIPELINE_DIR / "end-to-end.yaml")
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, task in _all_tasks(spec).items():
        if name.startswith("for-loop"):
            assert task["iteratorPolicy"] == {"parallelismLimit": 8}, name  # a loop over cities or shards
            continue
        if name.startswith("condition"):
            assert task["taskInfo"]["name"] == "better than the current model", name  # the promotion's branch
            continue
        component = _component(name).replace("-", "_")
        assert task["taskInfo"]["name"] == TASKS[component][0], name  # what the Kubeflow UI shows
        assert task["retryPolicy"] == {"maxRetryCount": RETRY["num_retries"], "backoffDuration": "60s",
                                       "backoffFactor": 2.0, "backoffMaxDuration": "3600s"}, name
        executor = executors[task["componentRef"]["name"].replace("comp-", "exec-", 1)]
        assert executor["activeDeadlineSeconds"] == str(TASKS[component][1]), name
        shm = [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": SHM_SIZE, "volumeName": "dshm"}]
        assert executor.get("emptyDirMounts") == (shm if _component(name) in GPU_COMPONENTS else None), name
        assert "nodeSelector" not in executor, name  # none unless compiled with one


@pytest.mark.parametrize("name", ["train", "generate", "end-to-end"])
def test_every_task_waits_for_the_tasks_whose_outputs_it_reads(name):
    """The backend orders a DAG by dependentTasks alone: a task reading another's output (its GPU count too)
    must name it there, or it may start before that output exists."""
    spec, _ = _documents(PIPELINE_DIR / f"{name}.yaml")
    dags = [spec["root"]["dag"], *(component["dag"] for component in spec["components"].values() if "dag" in component)]
    for dag in dags:
        for task_name, task in dag["tasks"].items():
            inputs = task.get("inputs", {})
            producers = {source[kind]["producerTask"] for group in ("parameters", "artifacts")
                         for source in inputs.get(group, {}).values()
                         for kind in ("taskOutputParameter", "taskOutputArtifact") if kind in source}
            assert producers <= set(task.get("dependentTasks", [])), task_name


def test_compile_with_a_per_commit_tag_a_gpu_node_selector_and_another_parallelism(tmp_path):
    assert main(["compile", "--out-dir", str(tmp_path), "--max-parallel", "2", "--tag", "0.1.0-0123456789ab",
                 "--gpu-node-selector", "nvidia.com/gpu.product=NVIDIA-H200"]) == 0
    spec, platform = _documents(tmp_path / "end-to-end.yaml")
    images = {executor["container"]["image"] for executor in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"localhost:5000/locgen/{stage}:0.1.0-0123456789ab" for stage in STAGE_IMAGES}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    selected = {_component(name) for name, executor in executors.items() if "nodeSelector" in executor}
    assert selected == GPU_COMPONENTS
    assert executors["exec-train-generator"]["nodeSelector"] == {"labels": {"nvidia.com/gpu.product": "NVIDIA-H200"}}
    loops = [task for name, task in _all_tasks(spec).items() if name.startswith("for-loop")]
    assert loops and all(task["iteratorPolicy"] == {"parallelismLimit": 2} for task in loops)
    with pytest.raises(LocgenError, match="--max-parallel 0: give 1 or more"):
        build_pipelines(max_parallel=0)


def _gpu_inputs(spec: dict) -> dict:
    """Each GPU task's accelerator count and the `gpus` it is told, as the compiled YAML says."""
    counts = {_component(name): executor["container"]["resources"].get("accelerator", {}).get("resourceCount")
              for name, executor in spec["deploymentSpec"]["executors"].items()}
    told = {}
    for name, task in _all_tasks(spec).items():
        if _component(name) in GPU_COMPONENTS:
            told[_component(name)] = task["inputs"]["parameters"]["gpus"]
    return {name: (counts[name], told[name]) for name in told}


def test_generation_imports_its_model_so_its_lineage_leads_to_the_training_run():
    from pipeline.pipelines import IMPORTER_NAME, SAMPLE_MODEL

    spec, _ = _documents(PIPELINE_DIR / "generate.yaml")
    assert spec["root"]["inputDefinitions"]["parameters"]["model_uri"]["defaultValue"] == SAMPLE_MODEL
    importer = spec["root"]["dag"]["tasks"]["importer"]
    assert importer["taskInfo"]["name"] == IMPORTER_NAME
    assert importer["inputs"]["parameters"]["uri"] == {"componentInputParameter": "model_uri"}
    assert spec["deploymentSpec"]["executors"]["exec-importer"]["importer"] == {
        "artifactUri": {"runtimeParameter": "uri"}, "typeSchema": {"schemaTitle": "system.Model",
                                                                   "schemaVersion": "0.0.1"}}  # reimport: false
    generating = [task for name, task in _all_tasks(spec).items() if _component(name) == "generate-tiles"]
    assert generating and all(task["inputs"]["artifacts"]["onnx_model"] == {
        "componentInputArtifact": "pipelinechannel--importer-artifact"} for task in generating)
    with pytest.raises(LocgenError, match=r"^model_uri '': give the model to generate with"):
        check_parameters(build_pipelines()["generate"], {"model_uri": ""})
    with pytest.raises(LocgenError, match=r"^model_uri no/model.onnx: no such file; give a model.onnx of locgen "):
        check_parameters(build_pipelines()["generate"], {"model_uri": "no/model.onnx"})


def test_a_gpu_count_reaches_the_driver_as_a_string():
    """KFP's driver sets a pod's nvidia.com/gpu from a parameterised count only when its value is a string."""
    spec, _ = _documents(PIPELINE_DIR / "train.yaml")
    assert spec["root"]["inputDefinitions"]["parameters"]["train_gpus"] == {
        "defaultValue": "1", "isOptional": True, "parameterType": "STRING"}
    # The train pod's own count: train_gpus, or none when it launches a job on train_nodes > 1 nodes.
    assert _gpu_inputs(spec) == {"train-generator": (
        "{{$.inputs.parameters['pipelinechannel--train-pod-gpus-Output']}}", {"componentInputParameter": "train_gpus"})}
    assert spec["root"]["dag"]["tasks"]["train-pod-gpus"]["inputs"]["parameters"] == {
        "gpus": {"componentInputParameter": "train_gpus"}, "nodes": {"componentInputParameter": "train_nodes"}}
    assert spec["root"]["dag"]["tasks"]["train-generator"]["inputs"]["parameters"]["pipelinechannel--train-pod-gpus-"
                                                                                   "Output"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "train-pod-gpus"}}
    assert (train_pod_gpus("4", 1), train_pod_gpus("4", 3)) == ("4", "0")
    assert spec["components"]["comp-train-generator"]["inputDefinitions"]["parameters"]["gpus"]["parameterType"] == \
        "STRING"
    spec, _ = _documents(PIPELINE_DIR / "end-to-end.yaml")
    assert spec["root"]["inputDefinitions"]["parameters"]["train_gpus"]["parameterType"] == "STRING"
    told = {str(gpus) for name, (count, gpus) in _gpu_inputs(spec).items() if name == "generate-tiles"}
    assert told == {str({"runtimeValue": {"constant": "1"}})}
    # Without GPUs, every GPU task is told it has none, whatever train_gpus says.
    cpu_only = build_pipelines(gpus=False)["end-to-end"].pipeline_spec
    assert {str(gpus) for _, gpus in _gpu_inputs(json_format.MessageToDict(cpu_only)).values()} == {
        str({"runtimeValue": {"constant": "0"}})}


def test_a_task_given_gpus_that_sees_none_fails_in_a_kfp_pod(tmp_path, monkeypatch):
    """This machine has no GPU: as a KFP task pod given one, train and generate each stop with one line."""
    from kfp.dsl import Dataset, Metrics, Model

    from pipeline.steps import generate_step, publish_tile_set, train_step

    render(RenderSettings(osm=[str(KOTKA_PBF)], out=str(tmp_path / "kotka"), center=(26.95, 60.53), grid=1,
                          city="kotka", progress=False))
    plain = Dataset(name="tiles", uri=str(tmp_path / "plain"))
    publish_tile_set(plain, str(tmp_path / "kotka"), {"city": "kotka"})
    monkeypatch.setenv("KFP_POD_NAME", "locgen-end-to-end-abc-123")
    with pytest.raises(LocgenError, match=r"^train_gpus 1: this pod's PyTorch sees 0 GPU\(s\); schedule it on a "
                                          r"node with NVIDIA GPUs"):
        train_step(store=str(tmp_path / "store"), run_id="r", preset="tiny", steps=2, batch_size=0, init_from="",
                   gpus="1", nodes=1, job={}, training_tiles=[plain],
                   generator=Model(name="m", uri=str(tmp_path / "m")),
                   metrics=Metrics(name="x", uri=str(tmp_path / "x")))
    generated = Dataset(name="generated", uri=str(tmp_path / "generated"))
    imported = Model(name="artifact", uri=str(BUNDLED_MODEL))  # what the generation pipeline's importer gives
    with pytest.raises(LocgenError, match="^" + re.escape(str(BUNDLED_MODEL)) + r": runs on the CPU here "
                                          r"\(CPUExecutionProvider\), but this task was given a GPU; schedule it"):
        generate_step(store=str(tmp_path / "store"), run_id="r", provider="auto", batch_size=8, shard=0,
                      shards=1, gpus="1", onnx_model=imported, tiles=plain, generated=generated,
                      metrics=Metrics(name="y", uri=str(tmp_path / "y")))
    assert not (tmp_path / "store").exists()  # nothing written
    with pytest.raises(LocgenError, match=r"^train_gpus 'two': give a whole number of GPUs as a text, e.g. '1'"):
        check_parameters(build_pipelines()["train"], {"train_gpus": "two"})
    assert check_parameters(build_pipelines()["train"], {"train_gpus": 2}) == {"train_gpus": "2"}  # --param reads 2


def test_training_on_several_nodes_outside_a_cluster_stops_at_once(tmp_path):
    """train_nodes > 1 launches a job through the pod's ServiceAccount: here there is none, and nothing is done."""
    from kfp.dsl import Metrics, Model

    from pipeline.steps import train_step

    def train_on(nodes: int) -> None:
        train_step(store=str(tmp_path / "store"), run_id="r", preset="tiny", steps=2, batch_size=0, init_from="",
                   gpus="4", nodes=nodes, job={}, training_tiles=[], generator=Model(name="m", uri=str(tmp_path / "m")),
                   metrics=Metrics(name="x", uri=str(tmp_path / "x")))

    with pytest.raises(LocgenError, match=r"^train_nodes > 1 launches a training job from a pipeline pod, through its "
                                          r"ServiceAccount; this is not one \(.+\): run it in the cluster, or "
                                          r"train_nodes 1$"):
        train_on(2)
    with pytest.raises(LocgenError, match=r"^train_nodes 0: give 1 \(this task's pod\) or more \(a distributed job\)$"):
        train_on(0)
    assert not (tmp_path / "store").exists()


def test_two_shards_make_the_tiles_one_makes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    settings = dict(osm=[str(HELSINKI_PBF)], city="helsinki", pairs=9, progress=False,
                    locations=["osm:amenity=bicycle_rental,amenity=bicycle_parking"])
    render(RenderSettings(out=str(one), **settings))
    for shard in (0, 1):
        render(RenderSettings(out=str(two), shard=shard, shards=2, **settings))
    assert not (two / MANIFEST_KEY).exists()  # only the parts, until collected
    merge_manifest_parts(open_store(str(two)), 2)
    assert (one / MANIFEST_KEY).read_bytes() == (two / MANIFEST_KEY).read_bytes()
    pngs = sorted(path.relative_to(one) for path in one.rglob("*.png"))
    assert len(pngs) == 18 and pngs == sorted(path.relative_to(two) for path in two.rglob("*.png"))
    assert all((one / path).read_bytes() == (two / path).read_bytes() for path in pngs)
    for shard in (0, 1):
        generate(GenerateSettings(tiles=str(one), out=str(tmp_path / "generated-two"), shard=shard, shards=2,
                                  progress=False))
    generate(GenerateSettings(tiles=str(one), out=str(tmp_path / "generated-one"), progress=False))
    merged = merge_manifest_parts(open_store(str(tmp_path / "generated-two")), 2)
    assert merged == read_manifest(open_store(str(tmp_path / "generated-one")))
    assert all((tmp_path / "generated-one" / row["path"]).read_bytes()
               == (tmp_path / "generated-two" / row["path"]).read_bytes() for row in merged)
    with pytest.raises(LocgenError, match="shard 1 of 3 has not published its part"):
        render(RenderSettings(out=str(tmp_path / "three"), shard=0, shards=3, **settings))
        merge_manifest_parts(open_store(str(tmp_path / "three")), 3)
    with pytest.raises(LocgenError, match="shard 2 of 2: give shards >= 1 and a shard from 0 to shards - 1"):
        render(RenderSettings(out=str(tmp_path / "bad"), shard=2, shards=2, **settings))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    return store, run_sample(store, SMALL, pretrained=False)


def test_end_to_end_runs_locally_and_every_artifact_names_its_lineage(small_run):
    store, where = small_run
    (held_out,) = where["held_out"]  # the sample's one city, with its held-out box
    assert held_out["city"] == "helsinki"
    for key, value in [*((key, where[key]) for key in ("points_csv", "points_geojson", "preview")),
                       *held_out.items()]:
        assert key == "city" or value.startswith(str(store)), key
    geojson = json.loads(open(where["points_geojson"]).read())
    assert geojson["type"] == "FeatureCollection" and geojson["attribution"] == OSM_ATTRIBUTION
    assert "| F1 within 50 m |" in open(held_out["evaluation_report"]).read()
    run = next(path for path in (store / "kfp").iterdir() if path.name != "logs")  # kfp.local's run, not our logs
    artifacts, artifact_uris = {}, {}
    for executor_output in run.rglob("executor_output.json"):  # the shards lie under for-loop-N-iteration-I/
        for name, listing in json.loads(executor_output.read_text()).get("artifacts", {}).items():
            artifacts[f"{executor_output.parent.name}/{name}"] = listing["artifacts"][0]["metadata"]
            artifact_uris[f"{executor_output.parent.name}/{name}"] = listing["artifacts"][0]["uri"]
    # What KFP's launcher would take from every task of the run, Metrics included: strict JSON, no null.
    for key, meta in artifacts.items():
        assert_launchable(meta, key)
    assert "evaluation" not in artifacts["extract-points/points"]  # Kotka's points: no truth, so no evaluation
    pointers = {key: meta for key, meta in artifacts.items() if "uri" in meta}
    assert {key.split("/")[1] for key in pointers} == {"tiles", "generator", "onnx_model", "generated", "points",
                                                       "model"}
    # The first model of the store has none to beat: it is promoted, and models/current.json names it.
    assert artifacts["decide-promotion/metrics"]["promote"] == 1.0
    current = json.loads((store / "helsinki" / "models" / "current.json").read_text())
    assert current["model"] == pointers["export-onnx/onnx_model"]["uri"] == pointers["promote-model/model"]["uri"]
    # The exported and the promoted Model artifacts are the ONNX file itself: the UI's Download gives the model,
    # and current.json names the promoted artifact, what the generation pipeline's model_uri imports.
    model_bytes = open(current["model"], "rb").read()
    for key in ("export-onnx/onnx_model", "promote-model/model"):
        assert open(artifact_uris[key], "rb").read() == model_bytes, key
    assert current["artifact_uri"] == artifact_uris["promote-model/model"]
    # the parts of a sharded tile set name no area: their collect task does (a tile set of one task names its own)
    pointers = {key: meta for key, meta in pointers.items() if int(meta.get("shards", 1)) == 1 or "shard" not in meta}
    for key, meta in pointers.items():
        assert meta["city"] in ("helsinki", "kotka") and meta["locgen_version"] == "0.1.0", key
        assert meta["git_commit"] == git_commit() and meta["style_version"] == "1", key
        assert len(meta["area"]) == 4 and meta["parents"] is not None, key
        assert meta["sources"] and all(len(source["sha256"]) == 64 for source in meta["sources"]), key
    tiles = pointers["render-city/tiles"]  # the training pairs: one task, inside the loop over the cities
    rows = read_manifest(open_store(tiles["uri"]))
    assert tiles["tiles"] == len(rows) and sum(row["domain"] == "a" for row in rows) == 12  # SMALL's pairs
    assert tiles["manifest_sha256"] and len(tiles["area"]) == 4
    assert all(len(source["sha256"]) == 64 for source in tiles["sources"]) and tiles["sources"]
    assert pointers["train-generator/generator"]["parents"] == [tiles["uri"]]
    assert pointers["train-generator/generator"]["cities"] == ["helsinki"]
    assert "/helsinki/runs/" in pointers["train-generator/generator"]["uri"]  # one city: its folder, as before
    assert pointers["train-generator/generator"]["init_from"] == "bundled"  # the demo starts from the bundled model
    assert pointers["export-onnx/onnx_model"]["parents"][0] == pointers["train-generator/generator"]["uri"]
    # The model the demo started from, validated on Helsinki's held-out box at step 0, beside the one it kept.
    trained = artifacts["train-generator/metrics"]
    assert trained["started_from_step"] == 0 and trained["validation_step"] in (0, 4)
    assert trained["validation_place_score"] >= trained["started_from_place_score"]
    assert trained["validation_places_helsinki_real"] == trained["started_from_places_helsinki_real"] == 20
    generated = [meta for meta in pointers.values() if meta.get("domains") == ["a"] and "provider" in meta]
    assert len(generated) == 2  # Kotka (collected from its shards) and the held-out box (one task)
    assert all(meta["parents"][0] == pointers["export-onnx/onnx_model"]["uri"] for meta in generated)
    assert pointers["extract-points-2/points"]["evaluation"].endswith("/report.json")  # the held-out box, scored
    html_pages = list(run.rglob("extract-points*/preview"))
    assert len(html_pages) == 2
    for page in html_pages:
        text = page.read_text()
        assert "data:image/png;base64," in text and OSM_ATTRIBUTION in text and "<table>" in text
    # The held-out box's page is its report: the run's own training drawn, the real points over the map.
    report_page = Path(pointers["extract-points-2/points"]["evaluation"]).with_suffix(".html").read_text()
    assert report_page == next(page for page in html_pages if page.parent.name == "extract-points-2").read_text()
    assert report_page.count("<polyline") == 3 and "place score" in report_page and "<circle cx=" in report_page


def test_a_rerun_reuses_the_rendered_tiles(small_run, tmp_path):
    store, _ = small_run
    tile_sets = sorted(path.parent for path in store.glob("*/tiles/*/manifest.jsonl"))
    before = {path: sorted(p.stat().st_mtime_ns for p in path.rglob("*.png")) for path in tile_sets}
    assert len(tile_sets) == 3  # the training pairs, Kotka and the held-out box
    run_sample(store, SMALL, pretrained=False)
    assert {path: sorted(p.stat().st_mtime_ns for p in path.rglob("*.png")) for path in tile_sets} == before


def test_pretrained_runs_generation_with_the_bundled_model(tmp_path, capfd):
    log_to_stderr()  # as the command line does
    where = run_sample(tmp_path, {"grid": 2}, pretrained=True)
    assert where["points"] > 0  # the bundled generator paints markers on Kotka
    report = open(where["held_out"][0]["evaluation_report"]).read()
    assert "**Verdict:**" in report
    page = Path(where["held_out"][0]["report_page"]).read_text()
    assert "<b>Verdict:</b>" in page and "data:image/png;base64," in page and OSM_ATTRIBUTION in page
    assert "No training record beside this model." in page  # the bundled model's training is not in the store
    # A person sees a line as each task starts and ends, and the tasks' own lines; the logs hold everything.
    shown = capfd.readouterr().err.splitlines()
    started = [line.removesuffix(" ...") for line in shown if line.endswith(" ...")]
    ended = [line.partition(": done")[0] for line in shown if re.match(r"locgen run: [^:]+: done", line)]
    assert started == ended and len(started) == 2 * 8  # two generation runs of eight tasks each
    assert "locgen run: extract and score the points: done in" in "\n".join(shown)
    assert not [line for line in shown if not line.startswith("locgen")]  # none of kfp.local's own lines
    logs = sorted((tmp_path / "kfp" / "logs").glob("locgen-generate-*.log"))
    assert len(logs) == 2 and all(f"the whole log of each task goes to {log}" in "\n".join(shown) for log in logs)
    assert all(text.count("Executing task") == 8 and "outputs:" in text for text in map(Path.read_text, logs))
    # It ends with what a person wants to know: where the points are, and how good they are.
    report = json.loads(Path(where["held_out"][0]["evaluation_report"]).with_suffix(".json").read_text())
    assert shown[-3:] == [
        f"locgen: {where['points']} points for the target town: {where['points_csv']} (and .geojson); over the map: "
        f"{where['preview']}",
        f"locgen: helsinki's held-out box: {report['verdict']['line']}; F1 within 50 m "
        f"{report['model']['metrics']['f1@50m']:.2f}, the best baseline's "
        f"{max(scores['metrics']['f1@50m'] for scores in report['baselines'].values()):.2f} "
        f"({max(report['baselines'], key=lambda name: report['baselines'][name]['metrics']['f1@50m'])}); the report, "
        f"with the map and the training: {where['held_out'][0]['report_page']}",
        "locgen: no training: the bundled model (locgen run without --pretrained trains one, starting from it)"]


@pytest.mark.parametrize("parameters, message", [
    ({"preset": "huge"}, "preset 'huge': unknown; give one of fastcut, tiny"),
    ({"target_center": "", "target_bbox": ""}, "no area: give target_bbox"),
    ({"target_bbox": "1,2,3"}, "target_bbox: '1,2,3' is not WEST,SOUTH,EAST,NORTH"),
    ({"cities": [{**SAMPLE_CITY, "osm": "/nowhere.osm.pbf"}]}, "cities[0] (helsinki): osm /nowhere.osm.pbf: no such"),
    ({"cities": [{**SAMPLE_CITY, "locations": []}]}, "cities[0] (helsinki): locations: give one or more location"),
    ({"colour": "red"}, "unknown parameters ['colour']"),
    ({"sampling": "everywhere"}, "sampling 'everywhere': give one of points, area"),
])
def test_bad_parameters_fail_before_any_stage_runs(tmp_path, parameters, message):
    with pytest.raises(LocgenError, match=re.escape(message)):
        run_sample(tmp_path, parameters, pretrained=False)
    assert not (tmp_path / "kfp").exists()


@pytest.mark.parametrize("module, task, extra", [("onnxscript", "export-onnx", "train,export"),
                                                 ("torch", "decide-promotion", "train")])
def test_a_missing_extra_is_named_before_any_task_runs(tmp_path, monkeypatch, module, task, extra):
    monkeypatch.setitem(sys.modules, module, None)  # how Python itself refuses a module: an import that fails
    with pytest.raises(LocgenError) as error:
        run_sample(tmp_path, {}, pretrained=False)
    assert str(error.value) == (f"locgen-end-to-end: its task '{task}' needs {module}, which does not import here "
                                f"(import of {module} halted; None in sys.modules); install it: pip install -c "
                                f"constraints.txt 'locgen[{extra}]' (or make install)")
    assert not (tmp_path / "kfp").exists()


def test_cli_run_and_compile_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--store", str(tmp_path), "--param", "steps"])
    assert "--param steps: give NAME=VALUE" in capsys.readouterr().err
    pipelines = build_pipelines()
    check_parameters(pipelines["generate"], {"grid": 3})  # the pipelines' own defaults are valid
    check_parameters(pipelines["end-to-end"], {})


def test_train_task_runs_one_ddp_process_per_gpu(tmp_path):
    """train_gpus > 1: torchrun in the task's pod, one process each (gloo here, on the CPU), on every city's tiles."""
    from kfp.dsl import Dataset, Metrics, Model

    from components.train.generator_file import load_generator
    from pipeline.steps import publish_tile_set, train_step

    tile_sets = []
    for city, osm, locations in (("kotka", KOTKA_PBF, "osm:highway=bus_stop"),
                                 ("helsinki", HELSINKI_PBF, "osm:amenity=bicycle_rental,amenity=bicycle_parking")):
        pairs = str(tmp_path / city)
        render(RenderSettings(osm=[str(osm)], out=pairs, pairs=4, city=city, progress=False, locations=[locations]))
        tile_sets.append(Dataset(name="tiles", uri=str(tmp_path / f"{city}-tiles")))
        publish_tile_set(tile_sets[-1], pairs, {"city": city})

    def task(batch_size: int) -> tuple[Model, Metrics]:
        model, metrics = Model(name="m", uri=str(tmp_path / "model")), Metrics(name="x", uri=str(tmp_path / "x"))
        train_step(store=str(tmp_path / "store"), run_id=f"run-{batch_size}", preset="tiny", steps=2, init_from="",
                   batch_size=batch_size, gpus=2, nodes=1, job={}, training_tiles=tile_sets, generator=model,
                   metrics=metrics)
        return model, metrics

    model, metrics = task(batch_size=2)
    # No held-out box: the validation's place score is null, which the artifacts leave out.
    assert load_generator(model.metadata["uri"])[1]["validation"]["place_score"] is None
    assert_launchable(model.metadata, "generator") and assert_launchable(metrics.metadata, "metrics")
    assert "place_score" not in model.metadata["validation"] and "validation_place_score" not in metrics.metadata
    assert metrics.metadata["validation_step"] == 2
    assert (model.metadata["nodes"], model.metadata["processes"]) == (1, 2)
    assert metrics.metadata["steps"] == 2 and metrics.metadata["cities"] == 2
    assert model.metadata["uri"].endswith("/helsinki-kotka/runs/run-2/train/generator.pt")
    assert model.metadata["cities"] == ["helsinki", "kotka"]  # by name, whatever order the tasks were collected in
    assert model.metadata["parents"] == [str(tmp_path / "helsinki"), str(tmp_path / "kotka")]

    trained = load_generator(model.metadata["uri"])[1]  # what the DDP processes trained on: --data once per set
    assert trained["data"] == model.metadata["parents"] and trained["cities"] == ["helsinki", "kotka"]
    with pytest.raises(LocgenError, match="train: torchrun with 2 processes failed"):
        task(batch_size=3)  # 3 tiles do not split over 2 processes: each process refuses, torchrun fails


def test_a_model_is_promoted_only_when_it_validates_better_than_the_current_one(tmp_path):
    """decide_promotion and promote_model as a training run calls them, on one city with a held-out box."""
    from kfp.dsl import Dataset, Metrics, Model

    from components.core.geo import parse_bbox
    from components.pretrained import BUNDLED_GENERATOR
    from pipeline.pipelines import SAMPLE_HOLDOUT
    from pipeline.steps import decide_promotion_step, promote_step, publish_tile_set, read_current

    render(RenderSettings(osm=[str(HELSINKI_PBF)], out=str(tmp_path / "pairs"), pairs=12, city="helsinki",
                          holdout=parse_bbox(SAMPLE_HOLDOUT, "holdout"), marker_radius_px=5.0, progress=False,
                          locations=["osm:amenity=bicycle_rental,amenity=bicycle_parking"]))
    tiles = Dataset(name="tiles", uri=str(tmp_path / "tiles"))
    publish_tile_set(tiles, str(tmp_path / "pairs"), {"city": "helsinki"})
    store = str(tmp_path / "store")
    generator = Model(name="generator", uri=str(tmp_path / "generator"))
    generator.metadata.update({"uri": str(BUNDLED_GENERATOR), "city": "helsinki", "validation": {"step": 0}})

    def decide(run_id: str) -> tuple[bool, dict]:
        metrics = Metrics(name="m", uri=str(tmp_path / f"metrics-{run_id}"))
        promote = decide_promotion_step(store=store, run_id=run_id, generator=generator, training_tiles=[tiles],
                                        metrics=metrics)
        report = json.loads((tmp_path / "store" / "helsinki" / "runs" / run_id / "promotion.json").read_text())
        assert_launchable(metrics.metadata, "metrics") and assert_launchable(report, "promotion.json")
        return promote, report

    promote, report = decide("run-1")
    assert promote is True and report["reason"] == "no current model" and "current" not in report
    assert report["new"]["places"]["helsinki"]["real"] == 20  # scored on the held-out box
    assert read_current(store, "helsinki") is None  # deciding promotes nothing
    exported = tmp_path / "store" / "helsinki" / "runs" / "run-1" / "model.onnx"
    shutil.copyfile(BUNDLED_MODEL, exported)  # what export_step left in the run's folder
    onnx_model = Model(name="onnx_model", uri=str(tmp_path / "onnx"))
    onnx_model.metadata.update({"uri": str(exported), "city": "helsinki",
                                "fp16_model": "model.fp16.onnx", "parity_report": "model.parity.json"})
    promoted = Model(name="model", uri=str(tmp_path / "promoted"))
    promote_step(store=store, run_id="run-1", onnx_model=onnx_model, generator=generator, model=promoted,
                 metrics=Metrics(name="p", uri=str(tmp_path / "p")))
    current = read_current(store, "helsinki")
    assert current["run_id"] == "run-1" and current["generator"] == str(BUNDLED_GENERATOR)
    assert current["model"] == onnx_model.metadata["uri"] and promoted.metadata["current"].endswith(
        "/helsinki/models/current.json")
    assert Path(promoted.path).read_bytes() == BUNDLED_MODEL.read_bytes()  # the UI's Download gives the model
    # The same model again: validated alike on the same tiles, it is not better than itself, so it is not promoted.
    promote, report = decide("run-2")
    assert promote is False and report["new"] == report["current"]
    assert report["reason"] == "not better than the current model by the place score on the held-out tiles"
    assert report["current_model"]["run_id"] == "run-1"
    # A current model made for other tiles cannot be compared on these: the run's replaces it, saying why.
    render(RenderSettings(osm=[str(HELSINKI_PBF)], out=str(tmp_path / "pairs-3px"), pairs=12, city="helsinki",
                          holdout=parse_bbox(SAMPLE_HOLDOUT, "holdout"), progress=False,
                          locations=["osm:amenity=bicycle_rental,amenity=bicycle_parking"]))
    publish_tile_set(tiles, str(tmp_path / "pairs-3px"), {"city": "helsinki"})
    promote, report = decide("run-3")
    assert promote is True and report["reason"] == ("the current model was made for tiles of marker radius 5 px, "
                                                    "these have marker radius 3 px: it cannot be compared here")


def assert_launchable(metadata: dict, where: str) -> bool:
    """Artifact metadata as KFP's launcher takes it: strict JSON (Go's parser refuses NaN and infinity), no null
    (its converter has no case for one)."""
    json.dumps(metadata, allow_nan=False)
    nulls = [path for path, value in _leaves(metadata, where) if value is None]
    assert not nulls, f"null metadata at {nulls}"
    return True


def _leaves(value, path: str):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def test_metadata_leaves_out_what_the_launcher_refuses():
    from pipeline.steps import launchable

    document = {"uri": "s3://b/k", "evaluation": None, "validation": {"dots_per_tile": float("nan"), "step": 4,
                "place_score": None, "places": {"helsinki": {"grid_spearman": float("inf"), "f1@50m": 0.25}}},
                "area": [1.0, 2.0, 3.0, 4.0], "parents": [], "ok": False}
    assert launchable(document) == {"uri": "s3://b/k", "validation": {"step": 4, "places": {"helsinki": {
        "f1@50m": 0.25}}}, "area": [1.0, 2.0, 3.0, 4.0], "parents": [], "ok": False}
    with pytest.raises(ValueError, match=r"artifact metadata area: \[1.0, nan\] holds a null or non-finite item"):
        launchable({"area": [1.0, float("nan")]})


def test_a_run_on_this_machine_does_not_retry_a_failed_task_and_a_cluster_run_does():
    for retries, expected in ((True, {"maxRetryCount": 3, "backoffDuration": "60s", "backoffFactor": 2.0,
                                      "backoffMaxDuration": "3600s"}), (False, None)):
        spec = json_format.MessageToDict(build_pipelines(retries=retries)["end-to-end"].pipeline_spec)
        tasks = [task for task in spec["root"]["dag"]["tasks"].values()  # tasks, not their groups (loops, ifs)
                 if not task["componentRef"]["name"].startswith(("comp-for-loop", "comp-condition"))]
        assert tasks and {json.dumps(task.get("retryPolicy"), sort_keys=True) for task in tasks} == {
            json.dumps(expected, sort_keys=True)}


def test_a_failing_stage_is_named_with_its_input(tmp_path, capfd):
    parameters = {**SMALL, "cities": [{**SAMPLE_CITY, "osm": str(HELSINKI_PBF),
                                       "locations": ["osm:amenity=no_such_amenity"]}]}  # valid, but locates nothing
    with pytest.raises(LocgenError, match=r"Inner task failed: 'render-city'.*run again: published tiles"):
        run_sample(tmp_path, parameters, pretrained=False)
    assert ("locgen run: render training pairs: FAILED: osm:amenity=no_such_amenity: gives no locations; check the "
            "source and its filters") in capfd.readouterr().err  # the stage's own error, where the person looks


def test_compile_for_another_registry_and_a_cluster_without_gpus(tmp_path):
    written = compile_all(tmp_path / "cpu", registry="registry.example.com/team", gpus=False)
    for path in written:
        spec, platform = _documents(path)
        containers = [executor["container"] for executor in spec["deploymentSpec"]["executors"].values()
                      if "container" in executor]  # not the generation pipeline's importer
        assert all(container["image"].startswith("registry.example.com/team/") for container in containers)
        assert not any("accelerator" in container["resources"] for container in containers)
        assert "tolerations" not in path.read_text()
    again = compile_all(tmp_path / "default")  # the settings do not leak into the next compile
    assert all(path.read_text() == (PIPELINE_DIR / path.name).read_text() for path in again)


def test_the_pipelines_are_built_from_their_arguments_not_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCGEN_IMAGE_REGISTRY", "elsewhere.example/team")
    monkeypatch.setenv("LOCGEN_PIPELINE_GPUS", "0")
    written = compile_all(tmp_path)
    assert all(path.read_text() == (PIPELINE_DIR / path.name).read_text() for path in written)
    cpu_only = build_pipelines(gpus=False)["train"]
    with_gpus = build_pipelines()["train"]  # a second build leaves the first as it was
    assert "nvidia.com/gpu" not in str(cpu_only.pipeline_spec) and "nvidia.com/gpu" in str(with_gpus.pipeline_spec)
    main(["compile", "--out-dir", str(tmp_path / "cli")])  # the command reads the registry variable, when it runs
    assert "elsewhere.example/team/render:" in (tmp_path / "cli" / "train.yaml").read_text()
