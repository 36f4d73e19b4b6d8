"""Training: deterministic unpaired batches, a few real steps on CPU, exact resume, clear errors."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from conftest import HELSINKI_PBF
from s3server import free_port, unique_prefix

from components.core.detect import detect_markers
from components.core.errors import LocgenError
from components.core.markers import MARKER_RGB
from components.core.storage import open_store
from components.core.tileset import MANIFEST_KEY, read_manifest
from components.train.config import PRESETS
from components.train.data import batch, load_tiles, to_model_input
from components.train.generator_file import GENERATOR_KEY, load_generator
from components.train.losses import lsgan_loss
from components.train.train import (
    LAST_KEY,
    METRICS_KEY,
    Models,
    TrainSettings,
    _average_gradients,
    _optimisers,
    _runtime,
    _share,
    _step,
    markers_per_tile,
    painted_dots_per_tile,
    train,
)
from locgen.cli import main

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
    summary = train(TrainSettings(pairs, out, TEST_CONFIG, device="cpu", progress=False))
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
    train(TrainSettings(pairs, straight, TEST_CONFIG, device="cpu", progress=False))
    halves = str(tmp_path / "halves")
    train(TrainSettings(pairs, halves, TEST_CONFIG, device="cpu", progress=False, stop_at=2))  # as if stopped half-way
    train(TrainSettings(pairs, halves, TEST_CONFIG, resume=True, device="cpu", progress=False))
    one, two = (torch.load(open_store(path).url(LAST_KEY), weights_only=True) for path in (straight, halves))
    assert one["step"] == two["step"] == 4
    for name, tensor in one["models"].items():
        assert torch.equal(tensor, two["models"][name]), name


def test_bad_inputs(pairs, tmp_path):
    with pytest.raises(LocgenError, match="no manifest.jsonl"):
        load_tiles(str(tmp_path / "nothing"), 0.1)
    plain = str(tmp_path / "plain")
    assert main(["render", "--osm", str(HELSINKI_PBF), "--out", plain, "--center", "60.17,24.94", "--grid", "1"]) == 0
    with pytest.raises(LocgenError, match="no domain-a tiles"):
        load_tiles(plain, 0.1)
    store = open_store(str(tmp_path / "mixed"))
    rows = read_manifest(open_store(pairs))[:2]
    rows[1] = {**rows[1], "size_px": 128}
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
        train(TrainSettings(pairs, str(broken), TEST_CONFIG, resume=True, device="cpu", progress=False))
    with pytest.raises(LocgenError, match="no checkpoint"):
        train(TrainSettings(pairs, str(tmp_path / "fresh"), TEST_CONFIG, resume=True, device="cpu", progress=False))


def test_cli_overrides_and_their_errors(pairs, tmp_path, capsys):
    assert main(["train", "--data", pairs, "--out", str(tmp_path / "cli"), "--steps", "2", "--batch-size", "1",
                 "--set", "ngf=8", "--set", "ndf=8", "--set", "crop_px=64", "--set", "num_patches=16",
                 "--set", "nce_channels=16", "--set", "checkpoint_every=2", "--set", "flip_equivariance=false"]) == 0
    for bad, message in [("lr=fast", "lr takes a float"), ("nope=1", "give NAME=VALUE with a setting")]:
        with pytest.raises(SystemExit):
            main(["train", "--data", pairs, "--out", str(tmp_path / "x"), "--set", bad])
        assert message in capsys.readouterr().err


def _ddp_worker(rank: int, port: int, data: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    train(TrainSettings(data, out, TEST_CONFIG, device="cpu", progress=False))
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
    summary = train(TrainSettings(pairs, out, CUDA_CONFIG, device="cuda", progress=False))
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
    train(TrainSettings(pairs, straight, config, device="cuda", progress=False))
    train(TrainSettings(pairs, halves, config, device="cuda", progress=False, stop_at=2))
    train(TrainSettings(pairs, halves, config, device="cuda", resume=True, progress=False))
    one, two = (torch.load(open_store(path).url(LAST_KEY), map_location="cpu", weights_only=True)
                for path in (straight, halves))
    assert one["step"] == two["step"] == 4
    assert [int(state["state"][0]["step"]) for state in two["optimisers"]] == [4, 4, 4]
    for first, second in zip(one["metrics"], two["metrics"], strict=True):
        if "loss_nce" in first:
            assert first["step"] == second["step"]
            for name in ("loss_d", "loss_g_gan", "loss_nce"):
                assert second[name] == pytest.approx(first[name], rel=1e-2, abs=1e-3), (first["step"], name)


class _Replay(torch.nn.Module):
    """A 'generator' that returns given images in turn, whatever its input."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images, self.served = images, 0

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        out = to_model_input(self.images[self.served:self.served + len(tiles)])
        self.served += len(tiles)
        return out


def test_validation_counts_lone_marker_dots_alike_on_real_and_generated_tiles(pairs):
    data = load_tiles(pairs, 0.0)
    images = data.a.permute(0, 2, 3, 1).numpy()
    real = markers_per_tile(images, data.marker_area_px)
    detected = np.mean([len(detect_markers(np.ascontiguousarray(image))) for image in images])
    assert 0.5 * detected <= real <= detected  # markers in clusters or cut by the border do not count
    counted = painted_dots_per_tile(_Replay(data.a), data.b, data.marker_area_px, torch.device("cpu"))
    assert counted == pytest.approx(real)
    # The same dots blended 40 % over the map: the pink tint an untrained generator lays along roads.
    is_marker = (data.a == torch.tensor(MARKER_RGB, dtype=torch.uint8)[:, None, None]).all(dim=1, keepdim=True)
    tinted = torch.where(is_marker, (0.4 * data.a + 0.6 * data.b).round().byte(), data.b)
    assert sum(len(detect_markers(np.ascontiguousarray(tile))) for tile in tinted.permute(0, 2, 3, 1).numpy()) > 0
    assert painted_dots_per_tile(_Replay(tinted), data.b, data.marker_area_px, torch.device("cpu")) == 0


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
