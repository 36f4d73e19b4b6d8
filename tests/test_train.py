"""Training: deterministic unpaired batches, a few real steps on CPU, exact resume, warm starts, clear errors."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from conftest import HELSINKI_PBF, ReplayGenerator
from s3server import free_port, unique_prefix

from components.core.detect import detect_markers
from components.core.errors import LocgenError
from components.core.markers import MARKER_RGB
from components.core.storage import open_store
from components.core.tileset import MANIFEST_KEY, read_manifest
from components.pretrained import BUNDLED_GENERATOR
from components.train.config import PRESETS
from components.train.data import batch, load_tiles, to_model_input
from components.train.generator_file import GENERATOR_KEY, load_generator
from components.train.losses import lsgan_loss
from components.train.train import (
    BEST_KEY,
    DOT_RATE_FACTOR,
    LAST_KEY,
    METRICS_KEY,
    Models,
    TrainSettings,
    _average_gradients,
    _better,
    _optimisers,
    _runtime,
    _share,
    _step,
    train,
    warm_start,
)
from components.train.validation import markers_per_tile, painted_dots_per_tile, translate
from locgen.cli import _resume_command, build_parser, main

# The tiny preset, smaller still: a CPU test, not a model.
TEST_CONFIG = PRESETS["tiny"].override(ngf=8, ndf=8, num_patches=16, nce_channels=16, batch_size=2, crop_px=64,
                                       steps=4, log_every=1, sample_every=2, checkpoint_every=2)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("pairs") / "tiles")
    assert main(["render", "--osm", str(HELSINKI_PBF), "--out", out, "--pairs", "12", "--city", "helsinki",
                 "--locations", "osm:amenity=bicycle_rental,amenity=bicycle_parking"]) == 0
    return out


def test_batches_are_a_function_of_seed_and_step(pairs):
    data = load_tiles(pairs, validation_share=0.2)
    assert len(data.a) == 12 and len(data.b) + len(data.held_out_b) == 12 and len(data.held_out_b) >= 1
    first = batch(data.a, 5, 0, 4, 128, 1)
    assert first.shape == (4, 3, 128, 128) and first.dtype == torch.uint8
    assert torch.equal(to_model_input(torch.tensor([[0, 255]], dtype=torch.uint8)), torch.tensor([[-1.0, 1.0]]))
    assert torch.equal(first, batch(data.a, 5, 0, 4, 128, 1))
    assert not torch.equal(first, batch(data.a, 6, 0, 4, 128, 1))
    assert not torch.equal(first, batch(data.a, 5, 1, 4, 128, 1))
    # An epoch visits every tile once: 12 tiles, batches of 4, three steps.
    seen = [batch(data.a, step, 0, 4, 256, 1) for step in range(3)]
    sums = sorted(int(image.sum()) for images in seen for image in images)  # turns and flips keep the sum
    assert sums == sorted(int(image.sum()) for image in data.a)


def test_a_few_steps_run_weights_change_and_outputs_are_written(pairs, tmp_path):
    out = str(tmp_path / "run")
    summary = train(TrainSettings([pairs], out, TEST_CONFIG, device="cpu", progress=False))
    assert summary["steps"] == 4
    store = open_store(out)
    metrics = [json.loads(line) for line in store.get_bytes(METRICS_KEY).decode().splitlines()]
    losses = [row for row in metrics if "loss_nce" in row]
    assert [row["step"] for row in losses] == [1, 2, 3, 4]
    assert all(np.isfinite([row["loss_d"], row["loss_g_gan"], row["loss_nce"]]).all() for row in losses)
    validations = [row["validation"] for row in metrics if "validation" in row]
    assert [v["step"] for v in validations] == [2, 4] and validations[0]["real_dots_per_tile"] > 0
    keys = store.list_keys()
    assert {"samples/step-0000002.png", "samples/step-0000004.png", GENERATOR_KEY, LAST_KEY} <= keys
    assert any(key.startswith("tensorboard/events.out.tfevents") for key in keys)  # TensorBoard is a test extra
    exported = torch.load(store.url(GENERATOR_KEY), weights_only=True)
    assert exported["cities"] == ["helsinki"] and exported["size_px"] == 256 and exported["m_per_px"] == 2.0
    assert exported["marker_radius_px"] == pytest.approx(3.0)
    assert exported["data_manifest_sha256"] == hashlib.sha256(open_store(pairs).get_bytes(MANIFEST_KEY)).hexdigest()
    initial = _initial_generator_weights()
    trained = exported["generator"]
    assert any(not torch.equal(initial[name], trained[name]) for name in initial)
    generator, metadata = load_generator(store.url(GENERATOR_KEY))
    assert not generator.training and metadata["validation"]["step"] in (2, 4)
    assert all(torch.equal(tensor, trained[name]) for name, tensor in generator.state_dict().items())
    with pytest.raises(LocgenError, match="not a generator export; give the generator.pt"):
        load_generator(store.url(LAST_KEY))
    with pytest.raises(LocgenError, match="not a readable generator"):
        load_generator(store.url(METRICS_KEY))


def _initial_generator_weights() -> dict:
    from components.train.train import Models

    torch.manual_seed(TEST_CONFIG.seed)
    return Models(TEST_CONFIG).generator.state_dict()


def test_resume_continues_exactly(pairs, tmp_path):
    straight = str(tmp_path / "straight")
    train(TrainSettings([pairs], straight, TEST_CONFIG, device="cpu", progress=False))
    halves = str(tmp_path / "halves")
    # as if stopped half-way
    train(TrainSettings([pairs], halves, TEST_CONFIG, device="cpu", progress=False, stop_at=2))
    train(TrainSettings([pairs], halves, TEST_CONFIG, resume=True, device="cpu", progress=False))
    one, two = (torch.load(open_store(path).url(LAST_KEY), weights_only=True) for path in (straight, halves))
    assert one["step"] == two["step"] == 4
    for name, tensor in one["models"].items():
        assert torch.equal(tensor, two["models"][name]), name


def test_resume_if_any_starts_from_its_model_then_resumes_its_own_checkpoint(pairs, tmp_path):
    """What a retried or restarted training task runs: a new run from --init-from at first, its own run after."""
    first = str(tmp_path / "first")
    train(TrainSettings([pairs], first, TEST_CONFIG.override(steps=2), device="cpu", progress=False))
    straight, retried = str(tmp_path / "straight"), str(tmp_path / "retried")
    start = open_store(first).url(GENERATOR_KEY)
    train(TrainSettings([pairs], straight, TEST_CONFIG, init_from=start, device="cpu", progress=False))
    begun = train(TrainSettings([pairs], retried, TEST_CONFIG, resume_if_any=True, init_from=start, device="cpu",
                                progress=False, stop_at=2))
    again = train(TrainSettings([pairs], retried, TEST_CONFIG, resume_if_any=True, init_from=start, device="cpu",
                                progress=False))
    assert (begun["resumed_from"], again["resumed_from"]) == (0, 2)
    one, two = (torch.load(open_store(path).url(LAST_KEY), weights_only=True) for path in (straight, retried))
    assert one["step"] == two["step"] == 4
    assert all(torch.equal(tensor, two["models"][name]) for name, tensor in one["models"].items())


def test_a_moving_average_of_g_is_validated_and_exported_and_resumes_exactly(pairs, tmp_path):
    config = TEST_CONFIG.override(ema_decay=0.5, checkpoint_every=4)
    straight = str(tmp_path / "straight")
    train(TrainSettings([pairs], straight, config, device="cpu", progress=False))
    halves = str(tmp_path / "halves")
    train(TrainSettings([pairs], halves, config, device="cpu", progress=False, stop_at=3))
    at_3 = torch.load(open_store(halves).url(LAST_KEY), weights_only=True)
    train(TrainSettings([pairs], halves, config, resume=True, device="cpu", progress=False))
    one, two = (torch.load(open_store(path).url(LAST_KEY), weights_only=True) for path in (straight, halves))
    average = {name.removeprefix("module."): tensor for name, tensor in one["generator_average"].items()
               if name.startswith("module.")}
    assert one["generator_average"]["n_averaged"] == 4
    for name, tensor in one["generator_average"].items():  # the resumed average is the straight one's
        assert torch.equal(tensor, two["generator_average"][name]), name
    trained = {name.removeprefix("generator."): tensor for name, tensor in one["models"].items()
               if name.startswith("generator.")}
    # Each step keeps half of the average and takes half of the new G; the trained G itself is not the average.
    before = {name.removeprefix("module."): tensor for name, tensor in at_3["generator_average"].items()
              if name.startswith("module.")}
    for name, tensor in average.items():
        torch.testing.assert_close(tensor, 0.5 * before[name] + 0.5 * trained[name])
    assert any(not torch.equal(average[name], trained[name]) for name in average)
    # The one checkpoint (step 4) is the best: generator.pt is the average, and its validation is the average's.
    exported = torch.load(open_store(straight).url(GENERATOR_KEY), weights_only=True)
    assert all(torch.equal(tensor, average[name]) for name, tensor in exported["generator"].items())
    generator, _ = load_generator(open_store(straight).url(GENERATOR_KEY))
    data = load_tiles(pairs, config.validation_share)
    assert painted_dots_per_tile(generator, data.held_out_b, data.marker_area_px, torch.device("cpu")) == \
        exported["validation"]["dots_per_tile"]
    with pytest.raises(LocgenError, match=r"^training setting ema_decay 1.5: give a number of at least 0 and below 1$"):
        config.override(ema_decay=1.5)


def _checkpoint_row(place_score: float | None, dots_per_tile: float, real: float = 4.0) -> dict:
    return {"place_score": place_score, "dots_per_tile": dots_per_tile, "real_dots_per_tile": real,
            "dot_rate_error": abs(dots_per_tile - real) / real}


def test_the_best_checkpoint_paints_near_the_real_rate_then_places_best():
    near, far = 5.0, 4.0 * DOT_RATE_FACTOR * 1.5  # 4 real dots a tile
    assert _better(_checkpoint_row(0.1, near), None)
    # Within the gate, places choose; a higher place score far off the real rate does not win.
    assert _better(_checkpoint_row(0.2, near), _checkpoint_row(0.1, 4.0))
    assert not _better(_checkpoint_row(0.1, near), _checkpoint_row(0.2, near))
    assert not _better(_checkpoint_row(0.9, far), _checkpoint_row(0.1, near))
    assert not _better(_checkpoint_row(0.9, 1.0), _checkpoint_row(0.1, near))  # a quarter of the rate: a few dots
    assert _better(_checkpoint_row(0.0, near), _checkpoint_row(0.9, far))
    assert _better(_checkpoint_row(0.1, 4.0 * DOT_RATE_FACTOR), _checkpoint_row(0.0, 4.0 / DOT_RATE_FACTOR))  # edges in
    # Outside it both: the nearer dot rate, whatever the places say.
    assert _better(_checkpoint_row(0.0, far), _checkpoint_row(0.9, far * 2))
    assert not _better(_checkpoint_row(0.5, float("nan")), _checkpoint_row(0.1, near))  # no held-out tile
    # No boxes: the dot rate alone.
    assert _better(_checkpoint_row(None, 5.0), _checkpoint_row(None, 6.0))
    assert not _better(_checkpoint_row(None, 6.0), _checkpoint_row(None, 5.0))


def test_bad_inputs(pairs, tmp_path):
    with pytest.raises(LocgenError, match="no manifest.jsonl"):
        load_tiles(str(tmp_path / "nothing"), 0.1)
    plain = str(tmp_path / "plain")
    assert main(["render", "--osm", str(HELSINKI_PBF), "--out", plain, "--center", "60.17,24.94", "--grid", "1"]) == 0
    with pytest.raises(LocgenError, match="no domain-a tiles"):
        load_tiles(plain, 0.1)
    store = open_store(str(tmp_path / "mixed"))
    rows = read_manifest(open_store(pairs))[:2]
    rows[1] = {**rows[1], "size_px": 128, "mpp_3857": rows[1]["mpp_3857"] * 2, "m_per_px": rows[1]["m_per_px"] * 2}
    store.put_bytes(MANIFEST_KEY, "".join(json.dumps(row) + "\n" for row in rows).encode())
    with pytest.raises(LocgenError, match=r"several sizes \[128, 256\]"):
        load_tiles(str(tmp_path / "mixed"), 0.1)
    older = [{key: value for key, value in row.items() if key != "marker_radius_px"}
             for row in read_manifest(open_store(pairs))[:2]]
    store.put_bytes(MANIFEST_KEY, "".join(json.dumps(row) + "\n" for row in older).encode())
    with pytest.raises(LocgenError, match="run the same locgen render again"):
        load_tiles(str(tmp_path / "mixed"), 0.1)
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / LAST_KEY).write_bytes(b"not a checkpoint")
    with pytest.raises(LocgenError, match="not a readable checkpoint"):
        train(TrainSettings([pairs], str(broken), TEST_CONFIG, resume=True, device="cpu", progress=False))
    with pytest.raises(LocgenError, match="no checkpoint"):
        train(TrainSettings([pairs], str(tmp_path / "fresh"), TEST_CONFIG, resume=True, device="cpu", progress=False))


def test_cli_overrides_and_their_errors(pairs, tmp_path, capsys):
    assert main(["train", "--data", pairs, "--out", str(tmp_path / "cli"), "--steps", "2", "--batch-size", "1",
                 "--set", "ngf=8", "--set", "ndf=8", "--set", "crop_px=64", "--set", "num_patches=16",
                 "--set", "nce_channels=16", "--set", "checkpoint_every=2", "--set", "flip_equivariance=false"]) == 0
    for bad, message in [("lr=fast", "lr takes a float"), ("nope=1", "give NAME=VALUE with a setting")]:
        with pytest.raises(SystemExit):
            main(["train", "--data", pairs, "--out", str(tmp_path / "x"), "--set", bad])
        assert message in capsys.readouterr().err


def test_a_new_run_never_replaces_a_run_unless_told_to(pairs, tmp_path, capsys):
    small = ["--steps", "2", "--batch-size", "1", "--set", "ngf=8", "--set", "ndf=8", "--set", "crop_px=64",
             "--set", "num_patches=16", "--set", "nce_channels=16", "--set", "checkpoint_every=2"]
    out = tmp_path / "run"
    command = ["train", "--data", pairs, "--out", str(out), *small]
    assert main(command) == 0
    capsys.readouterr()
    checkpoint = (out / LAST_KEY).read_bytes()
    assert _train_error(capsys, *command[1:]) == (
        f"locgen: error: --out {out} holds a training run ({LAST_KEY}); continue it with --resume, or start afresh "
        "there with --overwrite (its checkpoints are replaced)")
    assert (out / LAST_KEY).read_bytes() == checkpoint  # refused before anything was written
    assert main([*command, "--overwrite", "--set", "seed=1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["resumed_from"], summary["steps"]) == (0, 2) and (out / LAST_KEY).read_bytes() != checkpoint


@pytest.mark.parametrize("argv, resume", [
    (["train", "--data", "d", "--out", "o"], "locgen train --data d --out o --resume"),
    (["train", "--data", "d", "--out", "o", "--overwrite"], "locgen train --data d --out o --resume"),
    (["train", "--data", "d", "--out", "o", "--resume"], "locgen train --data d --out o --resume"),
    (["train", "--data", "d", "--out", "o", "--resume-if-any"], "locgen train --data d --out o --resume-if-any"),
    (["render", "--osm", "x.pbf", "--out", "my tiles", "--pairs", "3"],
     "locgen render --osm x.pbf --out 'my tiles' --pairs 3"),
])
def test_an_interrupted_command_says_the_exact_command_that_resumes_it(argv, resume):
    assert _resume_command(argv, build_parser().parse_args(argv)) == resume


def _ddp_worker(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    train(TrainSettings([data], out, TEST_CONFIG, device="cpu", progress=False))
    # This process's share of a fresh batch, its gradients averaged with the other's: what a step does.
    torch.manual_seed(0)
    models = Models(TEST_CONFIG)
    runtime = _runtime(models, TEST_CONFIG, torch.device("cpu"))
    tiles = load_tiles(data, TEST_CONFIG.validation_share).a
    images = to_model_input(_share(batch(tiles, 0, 0, 2, TEST_CONFIG.crop_px, 1), runtime))
    lsgan_loss(models.discriminator(images), True).backward()
    _average_gradients(models.discriminator, runtime)
    torch.save([p.grad for p in models.discriminator.parameters()], f"{out}/gradients-{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_processes_share_each_batch_and_average_their_gradients(pairs, tmp_path):
    """torchrun's way, here with the gloo backend on CPU."""
    together = str(tmp_path / "together")
    torch.multiprocessing.spawn(_ddp_worker, args=(free_port(), pairs, together), nprocs=2, join=True)
    assert torch.load(open_store(together).url(LAST_KEY), weights_only=True)["step"] == 4  # rank 0 wrote it
    torch.manual_seed(0)
    alone = Models(TEST_CONFIG)
    whole = to_model_input(batch(load_tiles(pairs, TEST_CONFIG.validation_share).a, 0, 0, 2, TEST_CONFIG.crop_px, 1))
    lsgan_loss(alone.discriminator(whole), True).backward()
    expected = [p.grad for p in alone.discriminator.parameters()]
    # Biases before an instance norm get gradients that are rounding noise (the norm removes them):
    # tolerance relative to the largest gradient.
    tolerance = 1e-4 * max(float(gradient.abs().max()) for gradient in expected)
    for rank in (0, 1):
        averaged = torch.load(f"{together}/gradients-{rank}.pt", weights_only=True)
        for mine, theirs in zip(averaged, expected, strict=True):
            assert torch.allclose(mine, theirs, rtol=1e-4, atol=tolerance)


# CUDA: run on a GPU machine (`pytest tests/test_train.py -k cuda`); without one they are reported as skipped.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA_CONFIG = TEST_CONFIG.override(bf16=True, channels_last=True, fused_adam=True, compile=True)


@requires_cuda
def test_cuda_steps_with_every_speed_up(pairs, tmp_path):
    out = str(tmp_path / "cuda")
    summary = train(TrainSettings([pairs], out, CUDA_CONFIG, device="cuda", progress=False))
    assert summary["steps"] == 4
    metrics = [json.loads(line) for line in open_store(out).get_bytes(METRICS_KEY).decode().splitlines()]
    assert all(np.isfinite([row["loss_d"], row["loss_g_gan"], row["loss_nce"]]).all()
               for row in metrics if "loss_nce" in row)
    exported = torch.load(open_store(out).url(GENERATOR_KEY), map_location="cpu", weights_only=True)
    initial = _initial_generator_weights()
    assert all(tensor.device.type == "cpu" for tensor in exported["generator"].values())
    assert any(not torch.equal(initial[name], exported["generator"][name]) for name in initial)


@requires_cuda
def test_cuda_first_step_matches_cpu(pairs):
    """No device is hard-coded: the same fp32 step gives the same losses on the GPU as on the CPU."""
    config = TEST_CONFIG.override(bf16=False, channels_last=False, fused_adam=False, compile=False)
    data = load_tiles(pairs, config.validation_share)
    losses = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        models = Models(config).to(device)
        runtime = _runtime(models, config, torch.device(device))
        step_losses = _step(models, runtime, _optimisers(models, config, torch.device(device)), data, config, 0)
        losses[device] = {name: float(loss) for name, loss in step_losses.items()}
    for name, value in losses["cpu"].items():
        assert losses["cuda"][name] == pytest.approx(value, rel=1e-2), name  # TF32 convolutions on the GPU


@requires_cuda
def test_cuda_resume_continues(pairs, tmp_path):
    """On the GPU, resume is exact up to its non-deterministic kernels: the losses after resuming match."""
    config = CUDA_CONFIG.override(compile=False, log_every=1)
    straight, halves = str(tmp_path / "straight"), str(tmp_path / "halves")
    train(TrainSettings([pairs], straight, config, device="cuda", progress=False))
    train(TrainSettings([pairs], halves, config, device="cuda", progress=False, stop_at=2))
    train(TrainSettings([pairs], halves, config, device="cuda", resume=True, progress=False))
    one, two = (torch.load(open_store(path).url(LAST_KEY), map_location="cpu", weights_only=True)
                for path in (straight, halves))
    assert one["step"] == two["step"] == 4
    assert [int(state["state"][0]["step"]) for state in two["optimisers"]] == [4, 4, 4]
    for first, second in zip(one["metrics"], two["metrics"], strict=True):
        if "loss_nce" in first:
            assert first["step"] == second["step"]
            for name in ("loss_d", "loss_g_gan", "loss_nce"):
                assert second[name] == pytest.approx(first[name], rel=1e-2, abs=1e-3), (first["step"], name)


def test_validation_counts_lone_marker_dots_alike_on_real_and_generated_tiles(pairs):
    data = load_tiles(pairs, 0.0)
    images = data.a.permute(0, 2, 3, 1).numpy()
    real = markers_per_tile(images, data.marker_area_px)
    detected = np.mean([len(detect_markers(np.ascontiguousarray(image))) for image in images])
    assert 0.5 * detected <= real <= detected  # markers in clusters or cut by the border do not count
    counted = painted_dots_per_tile(ReplayGenerator(data.a), data.b, data.marker_area_px, torch.device("cpu"))
    assert counted == pytest.approx(real)
    # The same dots blended 40 % over the map: the pink tint an untrained generator lays along roads.
    is_marker = (data.a == torch.tensor(MARKER_RGB, dtype=torch.uint8)[:, None, None]).all(dim=1, keepdim=True)
    tinted = torch.where(is_marker, (0.4 * data.a + 0.6 * data.b).round().byte(), data.b)
    assert sum(len(detect_markers(np.ascontiguousarray(tile))) for tile in tinted.permute(0, 2, 3, 1).numpy()) > 0
    assert painted_dots_per_tile(ReplayGenerator(tinted), data.b, data.marker_area_px, torch.device("cpu")) == 0


def test_s3_tiles_are_cached_so_a_rerun_downloads_nothing(pairs, s3_env, tmp_path):
    prefix = unique_prefix()
    local, remote = open_store(pairs), open_store(f"s3://{s3_env.bucket}/{prefix}")
    for key in local.list_keys():
        remote.put_bytes(key, local.get_bytes(key))
    uri, cache_dir = f"s3://{s3_env.bucket}/{prefix}", tmp_path / "cache"
    first = load_tiles(uri, 0.2, cache_dir)
    assert torch.equal(first.a, load_tiles(pairs, 0.2).a)
    for name in s3_env.object_names(f"{prefix}/"):
        if name.endswith(".png"):  # the store keeps only the manifest: the tiles must come from the cache
            s3_env.client().remove_object(s3_env.bucket, name)
    again = load_tiles(uri, 0.2, cache_dir)
    assert torch.equal(again.a, first.a) and torch.equal(again.held_out_b, first.held_out_b)
    assert again.manifest_sha256 == first.manifest_sha256


# Warm starts (--init-from). The bundled generator's training pairs, fewer: markers of radius 5 px, none in the box.
WARM_HOLDOUT = "24.9351,60.1641,24.9535,60.1680"
# A quarter of the plain tiles held out (17 of 40), so the validation counts enough tiles to compare.
WARM_CONFIG = PRESETS["tiny"].override(steps=50, checkpoint_every=25, validation_share=0.25)


@pytest.fixture(scope="module")
def warm_pairs(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("warm") / "tiles")
    assert main(["render", "--osm", str(HELSINKI_PBF), "--out", out, "--city", "helsinki", "--pairs", "40",
                 "--locations", "osm:amenity=bicycle_rental,amenity=bicycle_parking", "--marker-radius-px", "5",
                 "--holdout", WARM_HOLDOUT]) == 0
    return out


def _train_error(capsys, *arguments: str) -> str:
    """The one line that locgen train ends with when it refuses its arguments."""
    with pytest.raises(SystemExit) as exit_status:
        main(["train", *arguments])
    lines = capsys.readouterr().err.splitlines()
    assert exit_status.value.code == 2 and len(lines) == 1 and lines[0].startswith("locgen: error: "), lines
    return lines[0]


def test_init_from_a_model_that_does_not_fit_is_one_clear_line(pairs, warm_pairs, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    line = _train_error(capsys, "--data", warm_pairs, *out, "--init-from", "bundled", "--set", "ngf=8")
    assert line == ("locgen: error: --init-from bundled:tiny-helsinki.pt: a generator of ngf 16, n_blocks 5, but "
                    "this run's networks are ngf 8, n_blocks 5; train with --preset tiny or --set ngf=16 "
                    "--set n_blocks=5")
    # The bundled generator's export, but made (says its metadata) for another map style.
    export = torch.load(BUNDLED_GENERATOR, weights_only=True)
    restyled = tmp_path / "restyled.pt"
    torch.save({**export, "style_sha256": "0" * 64}, restyled)
    line = _train_error(capsys, "--data", warm_pairs, *out, "--init-from", str(restyled))
    style = read_manifest(open_store(warm_pairs))[0]["style_sha256"]
    assert line == (f"locgen: error: --init-from {restyled}: made for tiles of map style sha256 000000000000, but "
                    f"the tiles of --data have map style sha256 {style[:12]}; start from a model trained on tiles of "
                    "this map style, or train without --init-from")
    line = _train_error(capsys, "--data", pairs, *out, "--init-from", "bundled")  # markers of radius 3 px
    assert ("made for tiles of marker radius 5 px, but the tiles of --data have marker radius 3 px; render --data "
            "again with --marker-radius-px 5") in line
    unreadable = tmp_path / "generator.pt"
    unreadable.write_bytes(b"not a model")
    line = _train_error(capsys, "--data", warm_pairs, *out, "--init-from", str(unreadable))
    assert f"{unreadable}: not a readable model" in line and "give a generator.pt or checkpoints/last.pt" in line
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    line = _train_error(capsys, "--data", warm_pairs, *out, "--init-from", str(other))
    assert "neither a generator export nor a training checkpoint" in line
    assert not (tmp_path / "run").exists()  # nothing written


def test_init_from_a_checkpoint_sets_all_three_networks_and_the_run_records_it(pairs, tmp_path):
    first = str(tmp_path / "first")
    train(TrainSettings([pairs], first, TEST_CONFIG.override(steps=2), device="cpu", progress=False))
    checkpoint = open_store(first).url(LAST_KEY)
    saved = torch.load(checkpoint, weights_only=True)
    data = load_tiles(pairs, TEST_CONFIG.validation_share)
    models = Models(TEST_CONFIG)
    started = warm_start(models, checkpoint, TEST_CONFIG, data)
    assert started == {"uri": checkpoint, "kind": "checkpoint",
                       "sha256": hashlib.sha256(open_store(first).get_bytes(LAST_KEY)).hexdigest()}
    assert all(torch.equal(tensor, saved["models"][name]) for name, tensor in models.state_dict().items())
    # A generator export starts G alone: D and the head keep their usual initialisation.
    torch.manual_seed(TEST_CONFIG.seed)
    fresh = Models(TEST_CONFIG).state_dict()
    torch.manual_seed(TEST_CONFIG.seed)
    models = Models(TEST_CONFIG)
    warm_start(models, open_store(first).url(GENERATOR_KEY), TEST_CONFIG, data)
    exported = torch.load(open_store(first).url(GENERATOR_KEY), weights_only=True)["generator"]
    for name, tensor in models.state_dict().items():
        expected = exported[name.removeprefix("generator.")] if name.startswith("generator.") else fresh[name]
        assert torch.equal(tensor, expected), name
    with pytest.raises(LocgenError, match=r"a checkpoint of ngf 8, n_blocks 5, ndf 8, but this run's networks are "
                                          r"ngf 8, n_blocks 5, ndf 16; train with --set ngf=8 --set n_blocks=5 "
                                          r"--set ndf=8"):
        warm_start(Models(TEST_CONFIG.override(ndf=16)), checkpoint, TEST_CONFIG.override(ndf=16), data)
    # A new run from the checkpoint: step 0, fresh optimisers, and its lineage names what it started from.
    second = str(tmp_path / "second")
    summary = train(TrainSettings([pairs], second, TEST_CONFIG.override(steps=2), init_from=checkpoint, device="cpu",
                                  progress=False))
    assert summary["resumed_from"] == 0 and summary["init_from"] == started
    state = torch.load(open_store(second).url(LAST_KEY), weights_only=True)
    assert state["step"] == 2 and [int(saved["state"][0]["step"]) for saved in state["optimisers"]] == [2, 2, 2]
    assert state["lineage"]["init_from"] == started
    assert load_generator(open_store(second).url(GENERATOR_KEY))[1]["init_from"] == started
    metrics = [json.loads(line) for line in open_store(second).get_bytes(METRICS_KEY).decode().splitlines()]
    assert metrics[0] == {"init_from": started}
    assert [row["validation"]["step"] for row in metrics if "validation" in row] == [0, 2]


def test_warm_start_from_the_bundled_generator_keeps_its_validation(warm_pairs, tmp_path):
    data = load_tiles(warm_pairs, WARM_CONFIG.validation_share)
    bundled, _ = load_generator("bundled")
    # Step 0 of a warm start is the bundled generator, to the bit.
    models = Models(WARM_CONFIG)
    warm_start(models, "bundled", WARM_CONFIG, data)
    tiles = data.held_out_b[:2]
    assert np.array_equal(translate(models.generator, tiles, torch.device("cpu")),
                          translate(bundled, tiles, torch.device("cpu")))
    # The bundled generator's own validation on these held-out tiles: what the warm start must not lose.
    before = painted_dots_per_tile(bundled, data.held_out_b, data.marker_area_px, torch.device("cpu"))
    out = str(tmp_path / "warm")
    summary = train(TrainSettings([warm_pairs], out, WARM_CONFIG, init_from="bundled", device="cpu", progress=False))
    assert summary["steps"] == 50 and summary["init_from"]["uri"] == "bundled:tiny-helsinki.pt"
    metrics = [json.loads(line) for line in open_store(out).get_bytes(METRICS_KEY).decode().splitlines()]
    validations = {row["validation"]["step"]: row["validation"] for row in metrics if "validation" in row}
    assert sorted(validations) == [0, 25, 50] and validations[0]["dots_per_tile"] == before
    real = validations[0]["real_dots_per_tile"]
    assert real > 0 and before > 0
    # The run's model (the best checkpoint, which the starting model is a candidate for) places its points at least
    # as well as the bundled generator on the held-out box (the set has one, so places choose, not the dot rate),
    # and generator.pt is that model: its dots are the reported ones.
    best = summary["best"]
    assert validations[0]["place_score"] is not None and best["place_score"] >= validations[0]["place_score"]
    generator, lineage = load_generator(open_store(out).url(GENERATOR_KEY))
    assert lineage["validation"] == best == torch.load(open_store(out).url(BEST_KEY), weights_only=True)["best"]
    assert painted_dots_per_tile(generator, data.held_out_b, data.marker_area_px, torch.device("cpu")) == \
        best["dots_per_tile"]
    assert lineage["init_from"] == {"uri": "bundled:tiny-helsinki.pt", "kind": "generator",
                                    "sha256": hashlib.sha256(BUNDLED_GENERATOR.read_bytes()).hexdigest()}
    # The weights carried over into training: after 50 steps it still paints markers near the real rate (an
    # untrained generator paints none: 100 % off). Measured: 12.7 per tile against 8.9 real (42 % off) after 50
    # steps, 10.7 (20 % off) at the start.
    assert validations[50]["dot_rate_error"] < 0.5


def test_resume_with_init_from_is_refused(pairs, tmp_path, capsys):
    line = _train_error(capsys, "--data", pairs, "--out", str(tmp_path / "run"), "--resume", "--init-from", "bundled")
    assert line == ("locgen: error: --resume with --init-from bundled: --resume continues the run in --out (its step, "
                    "optimisers and weights), --init-from starts a new one from a model's weights; give one of them")
