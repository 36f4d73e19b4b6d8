"""The FastCUT networks and losses: shapes, CUT's layer indexing and parameter counts, and the losses against
direct computations written here independently of components/train."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from components.train.losses import lsgan_loss, patch_nce_loss
from components.train.networks import (
    BlurDownsample,
    BlurUpsample,
    Discriminator,
    Generator,
    PatchSampleMLP,
    init_weights,
)

NCE_LAYERS = [0, 4, 8, 12, 16]  # FastCUT's PatchNCE layers


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def unit_rows(rows: int, nc: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, nc), dim=1)


# --- generator ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size_px", [64, 128, 256])
@pytest.mark.parametrize("batch", [1, 3])
def test_generator_keeps_the_image_shape(size_px, batch):
    generator = Generator(ngf=4, n_blocks=2)
    with torch.no_grad():
        out = generator(torch.rand(batch, 3, size_px, size_px) * 2 - 1)
    assert out.shape == (batch, 3, size_px, size_px)
    assert out.abs().max() <= 1  # tanh


def test_generator_takes_non_square_tiles():
    with torch.no_grad():
        assert Generator(ngf=4, n_blocks=1)(torch.zeros(2, 3, 64, 96)).shape == (2, 3, 64, 96)


def test_default_generator_at_64_px_and_its_parameter_count():
    generator = Generator()
    with torch.no_grad():
        assert generator(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    # CUT's resnet_9blocks with ngf 64; every conv has a bias (instance norm), instance norm has no parameters:
    #   7x7 conv 3 -> 64:              3*64*49 + 64     =      9,472
    #   3x3 conv 64 -> 128:            64*128*9 + 128   =     73,856
    #   3x3 conv 128 -> 256:           128*256*9 + 256  =    295,168
    #   9 blocks of 2 3x3 convs 256:   9*2*(256*256*9 + 256) = 10,621,440
    #   3x3 conv 256 -> 128:           256*128*9 + 128  =    295,040
    #   3x3 conv 128 -> 64:            128*64*9 + 64    =     73,792
    #   7x7 conv 64 -> 3:              64*3*49 + 3      =      9,411
    #   total                                              11,378,179 (the official count)
    # The blur filters are constant buffers, not parameters, in CUT and here.
    assert sum(p.numel() for p in generator.parameters()) == 11_378_179


@pytest.mark.parametrize("height, width", [(130, 128), (128, 126), (4, 4), (63, 64)])
def test_generator_rejects_sizes_it_cannot_restore(height, width):
    with pytest.raises(ValueError, match=rf"{height}x{width} px.*multiples of 4"):
        Generator(ngf=4, n_blocks=1)(torch.zeros(1, 3, height, width))


def test_encode_returns_the_official_features():
    generator = Generator(ngf=8, n_blocks=5)
    batch, size = 3, 64
    image = torch.rand(batch, 3, size, size)
    features = generator.encode(image, NCE_LAYERS)
    assert [tuple(f.shape) for f in features] == [
        (batch, 3, size + 6, size + 6),  # 0: the reflect-padded input
        (batch, 16, size, size),  # 4: the first downsampling's conv, before its blur
        (batch, 32, size // 2, size // 2),  # 8: the second downsampling's conv
        (batch, 32, size // 4, size // 4),  # 12: after the first ResNet block
        (batch, 32, size // 4, size // 4),  # 16: after the fifth ResNet block
    ]
    assert torch.equal(features[0], F.pad(image, (3, 3, 3, 3), mode="reflect"))
    assert generator.feature_channels(NCE_LAYERS) == [f.shape[1] for f in features]


def test_encode_gives_the_layer_outputs_of_forward_and_stops_at_the_last_asked():
    generator = Generator(ngf=4, n_blocks=5)
    outputs = {}
    for index, layer in enumerate(generator.layers):
        layer.register_forward_hook(lambda module, args, out, index=index: outputs.__setitem__(index, out.clone()))
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        generator(image)
        assert len(outputs) == len(generator.layers)
        outputs_of_forward = dict(outputs)
        outputs.clear()
        features = generator.encode(image, [8, 0, 12])  # any order, answered in that order
    assert sorted(outputs) == list(range(13))  # nothing after layer 12 ran
    for index, feature in zip([8, 0, 12], features):
        assert torch.equal(feature, outputs_of_forward[index])


def test_encode_and_feature_channels_reject_unknown_layers():
    generator = Generator(ngf=4, n_blocks=1)
    for layers in ([], [0, 99], [-1]):
        with pytest.raises(ValueError, match="indices from 0 to"):
            generator.encode(torch.zeros(1, 3, 16, 16), layers)
        with pytest.raises(ValueError, match="indices from 0 to"):
            generator.feature_channels(layers)


def test_feature_channels_of_the_default_generator():
    assert Generator().feature_channels(NCE_LAYERS) == [3, 128, 256, 256, 256]


# --- anti-aliased resampling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [6, 7])
def test_blur_downsample_is_the_121_filter_with_stride_2(size):
    image = torch.randn(2, 3, size, size, dtype=torch.float64)
    taps = [1, 2, 1]
    padded = F.pad(image, (1, 1, 1, 1), mode="reflect")
    out_size = math.ceil(size / 2)
    expected = torch.zeros(2, 3, out_size, out_size, dtype=torch.float64)
    for row in range(out_size):
        for col in range(out_size):
            for a in range(3):
                for b in range(3):
                    expected[:, :, row, col] += taps[a] * taps[b] / 16 * padded[:, :, 2 * row + a, 2 * col + b]
    assert torch.allclose(BlurDownsample().double()(image), expected)


def test_blur_upsample_equals_cuts_transposed_blur():
    # CUT's Upsample (filter size 4, replicate padding), computed its way: a depthwise transposed conv with
    # [1, 3, 3, 1] x [1, 3, 3, 1] / 64 * stride^2 on the input padded by 1, cropped by one pixel on each side.
    image = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    kernel = (torch.outer(taps, taps) / 64 * 4).expand(5, 1, 4, 4)
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    expected = F.conv_transpose2d(padded, kernel, stride=2, padding=2, groups=5)[:, :, 1:-1, 1:-1]
    assert expected.shape == (2, 5, 14, 18)
    assert torch.allclose(BlurUpsample()(image), expected, atol=1e-12)


# --- discriminator --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size_px, logits_px", [(64, 6), (128, 14), (256, 30)])
@pytest.mark.parametrize("batch", [1, 3])
def test_discriminator_gives_a_map_of_patch_logits(size_px, logits_px, batch):
    with torch.no_grad():
        logits = Discriminator(ndf=8)(torch.rand(batch, 3, size_px, size_px))
    assert logits.shape == (batch, 1, logits_px, logits_px)


def test_default_discriminator_parameter_count():
    # 4x4 convs with biases: 3->64 (3,136), 64->128 (131,200), 128->256 (524,544), 256->512 (2,097,664),
    # 512->1 (8,193): 2,764,737, CUT's basic discriminator with ndf 64.
    discriminator = Discriminator()
    assert sum(p.numel() for p in discriminator.parameters()) == 2_764_737
    with torch.no_grad():
        assert discriminator(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)


# --- the PatchNCE head ----------------------------------------------------------------------------------------------


def features_of(batch: int) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, 10, 10), torch.randn(batch, 16, 8, 8), torch.randn(batch, 32, 4, 4)]


def test_head_is_built_eagerly():
    head = PatchSampleMLP([3, 16, 32], nc=24)
    assert len(list(head.parameters())) == 3 * 4  # two linear layers of weight and bias per feature layer
    assert [mlp[0].in_features for mlp in head.mlps] == [3, 16, 32]


def test_head_samples_unit_vectors():
    head = PatchSampleMLP([3, 16, 32], nc=24)
    samples, ids = head(features_of(3), num_patches=12)
    assert [tuple(s.shape) for s in samples] == [(36, 24)] * 3
    assert [len(set(i.tolist())) for i in ids] == [12, 12, 12]
    for sample in samples:
        assert torch.allclose(sample.norm(dim=1), torch.ones(len(sample)), atol=1e-5)


def test_head_takes_at_most_every_position():
    head = PatchSampleMLP([32], nc=8)
    samples, ids = head([torch.randn(2, 32, 4, 4)], num_patches=256)
    assert samples[0].shape == (2 * 16, 8)
    assert sorted(ids[0].tolist()) == list(range(16))


def test_head_uses_the_same_positions_in_every_image_and_reuses_given_ids():
    head = PatchSampleMLP([3, 16, 32], nc=24)
    one_image = features_of(1)
    twice = [torch.cat([feature, feature]) for feature in one_image]
    samples, ids = head(twice, num_patches=5)
    for sample in samples:
        assert torch.allclose(sample[:5], sample[5:], atol=1e-6)
    other = features_of(2)
    reused, same_ids = head(other, num_patches=5, patch_ids=ids)
    assert all(torch.equal(a, b) for a, b in zip(ids, same_ids))
    for feature, mlp, layer_ids, sample in zip(other, head.mlps, ids, reused):
        rows, cols = layer_ids // feature.shape[3], layer_ids % feature.shape[3]
        for image in range(2):
            picked = feature[image, :, rows, cols].T  # (5, C): the vectors at those positions
            projected = mlp(picked)
            expected = projected / projected.norm(dim=1, keepdim=True)
            assert torch.allclose(sample[5 * image:5 * image + 5], expected, atol=1e-6)


def test_head_sampling_is_deterministic_with_a_seeded_generator():
    head = PatchSampleMLP([3, 16, 32], nc=24)
    features = features_of(2)
    first, first_ids = head(features, 7, generator=torch.Generator().manual_seed(42))
    again, again_ids = head(features, 7, generator=torch.Generator().manual_seed(42))
    _, other_ids = head(features, 7, generator=torch.Generator().manual_seed(43))
    assert all(torch.equal(a, b) for a, b in zip(first_ids, again_ids))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first_ids, other_ids))


def test_head_rejects_a_wrong_number_of_feature_maps():
    with pytest.raises(ValueError, match="2 MLPs but got 3"):
        PatchSampleMLP([3, 16], nc=8)(features_of(1), 4)


# --- losses ---------------------------------------------------------------------------------------------------------


def direct_patch_nce(query, key, batch_size, temperature):
    """PatchNCE patch by patch: cross-entropy of [positive, negatives] / T, the positive first, the negatives the
    keys of the other patches of the same image."""
    num_patches = len(query) // batch_size
    losses = []
    for image in range(batch_size):
        for patch in range(num_patches):
            q = query[image * num_patches + patch].double()
            logits = [q @ key[image * num_patches + patch].double()]
            logits += [q @ key[image * num_patches + other].double() for other in range(num_patches) if other != patch]
            logits = torch.stack(logits) / temperature
            losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_patch_nce_equals_the_direct_computation(batch_size):
    num_patches, nc = 6, 8
    query, key = unit_rows(batch_size * num_patches, nc), unit_rows(batch_size * num_patches, nc)
    losses = patch_nce_loss(query, key, batch_size, temperature=0.07)
    assert losses.shape == (batch_size * num_patches,)
    assert torch.allclose(losses.double(), direct_patch_nce(query, key, batch_size, 0.07), rtol=1e-5, atol=1e-5)
    assert torch.allclose(patch_nce_loss(query, key, batch_size, temperature=0.5).double(),
                          direct_patch_nce(query, key, batch_size, 0.5), rtol=1e-5, atol=1e-6)


def test_patch_nce_takes_negatives_from_the_same_image_only():
    query, key = unit_rows(8, 4), unit_rows(8, 4)
    per_image = torch.cat([patch_nce_loss(query[:4], key[:4], 1), patch_nce_loss(query[4:], key[4:], 1)])
    assert torch.allclose(patch_nce_loss(query, key, 2), per_image)
    # CUT's bug reshaped with the configured batch size: one image of 8 patches is a different loss.
    assert not torch.allclose(patch_nce_loss(query, key, 1), per_image)


def test_patch_nce_is_lower_for_matched_features_than_for_shuffled_ones():
    batch_size, num_patches, nc = 2, 64, 32
    key = unit_rows(batch_size * num_patches, nc)
    query = F.normalize(key + 0.3 * torch.randn_like(key), dim=1)
    shuffled = query[torch.randperm(len(query))]
    matched_loss = patch_nce_loss(query, key, batch_size).mean()
    assert matched_loss < patch_nce_loss(shuffled, key, batch_size).mean()
    # With unrelated features the loss is about log(num_patches), chance among num_patches keys.
    assert matched_loss < 0.5 * math.log(num_patches)


def test_patch_nce_trains_the_query_only():
    query = unit_rows(6, 4).requires_grad_()
    key = unit_rows(6, 4).requires_grad_()
    patch_nce_loss(query, key, 2).mean().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert key.grad is None


def test_patch_nce_rejects_rows_that_do_not_split_into_images():
    with pytest.raises(ValueError, match="7 patch rows cannot come from 2 images"):
        patch_nce_loss(unit_rows(7, 4), unit_rows(7, 4), 2)
    with pytest.raises(ValueError, match="one shape"):
        patch_nce_loss(unit_rows(6, 4), unit_rows(6, 5), 2)


def test_lsgan_loss_on_known_values():
    prediction = torch.tensor([[[[0.5, 1.5], [1.0, -1.0]]]])
    assert lsgan_loss(prediction, True).item() == pytest.approx((0.25 + 0.25 + 0 + 4) / 4)
    assert lsgan_loss(prediction, False).item() == pytest.approx((0.25 + 2.25 + 1 + 1) / 4)
    assert lsgan_loss(torch.ones(2, 1, 3, 3), True).item() == 0


# --- initialisation -------------------------------------------------------------------------------------------------


def test_init_weights_is_xavier_normal_with_gain_0_02():
    network = nn.Sequential(nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Linear(256, 512))
    init_weights(network, gain=0.02)
    conv, linear = network[0], network[2]
    conv_std = 0.02 * math.sqrt(2 / (64 * 9 + 128 * 9))  # fans count the kernel's taps
    linear_std = 0.02 * math.sqrt(2 / (256 + 512))
    assert conv.weight.std().item() == pytest.approx(conv_std, rel=0.02)
    assert linear.weight.std().item() == pytest.approx(linear_std, rel=0.02)
    assert conv.weight.mean().abs().item() < 0.05 * conv_std
    assert torch.all(conv.bias == 0) and torch.all(linear.bias == 0)


def test_init_weights_reaches_every_layer_of_the_networks():
    for network in (Generator(ngf=4, n_blocks=2), Discriminator(ndf=4), PatchSampleMLP([3, 8], nc=16)):
        init_weights(network)
        for layer in network.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
                expected = 0.02 * math.sqrt(2 / (fan_in + fan_out))
                assert layer.weight.std().item() == pytest.approx(expected, rel=0.5)  # small layers: loose
                assert torch.all(layer.bias == 0)
