"""The FastCUT networks: a ResNet generator, a PatchGAN discriminator and the PatchNCE projection head.

The mathematics is that of the official CUT code (taesungp/contrastive-unpaired-translation, models/networks.py,
with its FastCUT defaults: instance norm without affine parameters, no dropout, anti-aliased down- and
upsampling); the structure is ours: plain modules, no networks built from strings. The generator keeps the
official flat layer sequence, so the layer indices of PatchNCE (0, 4, 8, 12, 16) pick the same features.

None of the constructors initialises weights the CUT way: call `init_weights` on each network (the trainer does).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The generator downsamples twice by 2 and upsamples twice by 2: sides must be multiples of 4 to come back whole.
SIZE_MULTIPLE = 4
# Its ResNet blocks reflect-pad by 1 at a quarter of the input size, which needs at least 2 pixels there.
MIN_SIZE_PX = 8


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Initialise every conv and linear layer of `module` as CUT's init_type 'xavier' does.

    Weights are drawn from N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)) (Glorot normal), biases are
    zero. Norm layers have no parameters here (instance norm without affine), so nothing else needs initialising.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(layer.weight, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class BlurDownsample(nn.Module):
    """Anti-aliased downsampling by 2 (Zhang 2019, "Making convolutional networks shift-invariant again").

    Blurs with the normalised binomial filter [1, 2, 1] x [1, 2, 1] / 16 on a reflect-padded input, then keeps
    every other pixel: output side = ceil(input side / 2). Each channel is filtered on its own (a depthwise conv).
    """

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16.0
        # A constant, not a weight: rebuilt with the module, so checkpoints need not carry it.
        self.register_buffer("kernel", kernel[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(padded, self.kernel.expand(channels, -1, -1, -1), stride=2, groups=channels)


class BlurUpsample(nn.Module):
    """Anti-aliased upsampling by 2, CUT's `Upsample` (its default filter size 4).

    CUT inserts zeros between the pixels of a replicate-padded input and blurs with [1, 3, 3, 1] x [1, 3, 3, 1] / 16
    (a depthwise transposed conv, stride 2), then crops one pixel on each side. Every output pixel is thereby
    3/4 of its nearest input pixel plus 1/4 of the next one along each axis, with the edge pixels repeated: exactly
    bilinear interpolation with half-pixel centres, which is what we compute (one fused kernel, exported to ONNX
    as a plain Resize). tests/test_networks.py checks the equality against CUT's formulation.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ResnetBlock(nn.Module):
    """x + (reflect-pad, 3x3 conv, instance norm, ReLU, reflect-pad, 3x3 conv, instance norm)(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Generator(nn.Module):
    """CUT's `resnet_9blocks` generator (Johnson et al. 2016) with anti-aliased resampling: image in [-1, 1] -> image.

    One flat layer sequence, numbered as in CUT (for ngf 64 and 9 blocks):
         0      reflect-pad 3                                  (B, 3, H+6, W+6)   <- PatchNCE layer 0
         1-3    7x7 conv to ngf, instance norm, ReLU           (B, 64, H, W)
         4-7    3x3 conv to 2 ngf, norm, ReLU, blur-downsample (B, 128, H, W) after 4 <- layer 4
         8-11   3x3 conv to 4 ngf, norm, ReLU, blur-downsample (B, 256, H/2, W/2) after 8 <- layer 8
        12-20   9 ResNet blocks                                (B, 256, H/4, W/4) after 12 and 16 <- layers 12, 16
        21-24   blur-upsample, 3x3 conv to 2 ngf, norm, ReLU   (B, 128, H/2, W/2)
        25-28   blur-upsample, 3x3 conv to ngf, norm, ReLU     (B, 64, H, W)
        29-31   reflect-pad 3, 7x7 conv to channels, tanh      (B, 3, H, W)
    Every conv has a bias (CUT's rule with instance norm). The 3x3 convs around the resamplings zero-pad, as in CUT;
    the 7x7 convs and the ResNet blocks reflect-pad. ReLUs are not in-place, so a feature `encode` returns is never
    overwritten by the layer after it.
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 9, channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, ngf, kernel_size=7),
            nn.InstanceNorm2d(ngf),
            nn.ReLU(),
        ]
        for width in (ngf, 2 * ngf):  # two anti-aliased downsamplings, each doubling the width
            layers += [
                nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
                nn.InstanceNorm2d(2 * width),
                nn.ReLU(),
                BlurDownsample(),
            ]
        layers += [ResnetBlock(4 * ngf) for _ in range(n_blocks)]
        for width in (4 * ngf, 2 * ngf):  # two anti-aliased upsamplings, each halving the width
            layers += [
                BlurUpsample(),
                nn.Conv2d(width, width // 2, kernel_size=3, padding=1),
                nn.InstanceNorm2d(width // 2),
                nn.ReLU(),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, kernel_size=7), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        self._check_size(x)
        return self.layers(x)

    def encode(self, x: Tensor, layers: Sequence[int]) -> list[Tensor]:
        """The outputs of the given layers (indices into the sequence above), in the order asked.

        Runs only as far as the deepest layer asked for: PatchNCE needs the encoder, not the decoder.
        """
        self._check_layers(layers)
        self._check_size(x)
        wanted = set(layers)
        features: dict[int, Tensor] = {}
        for index, layer in enumerate(self.layers[: max(layers) + 1]):
            x = layer(x)
            if index in wanted:
                features[index] = x
        return [features[index] for index in layers]

    def feature_channels(self, layers: Sequence[int]) -> list[int]:
        """The number of channels of each feature `encode(x, layers)` returns (the input widths of the MLP head)."""
        self._check_layers(layers)
        channels_after = []
        channels = self.channels
        for layer in self.layers:
            channels = getattr(layer, "out_channels", channels)  # only convs change the width
            channels_after.append(channels)
        return [channels_after[index] for index in layers]

    def _check_layers(self, layers: Sequence[int]) -> None:
        count = len(self.layers)
        if not layers or any(not 0 <= index < count for index in layers):
            raise ValueError(f"generator layers {list(layers)}: give one or more indices from 0 to {count - 1}")

    @staticmethod
    def _check_size(x: Tensor) -> None:
        height, width = x.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or min(height, width) < MIN_SIZE_PX:
            raise ValueError(
                f"generator input is {height}x{width} px: height and width must be multiples of {SIZE_MULTIPLE} "
                f"of at least {MIN_SIZE_PX} px (e.g. {MIN_SIZE_PX}, 12, ..., 128, 132, ..., 256); "
                "crop or pad the tiles to such a size"
            )


class Discriminator(nn.Module):
    """CUT's `basic` discriminator: a 70x70 PatchGAN (Isola et al. 2017) with anti-aliased downsampling.

    Where pix2pix uses 4x4 convs with stride 2, CUT uses stride 1 followed by a blur-downsample. With n_layers 3:
    conv 4x4 to ndf + LeakyReLU + blur-downsample; twice conv 4x4 doubling the width + instance norm + LeakyReLU +
    blur-downsample; conv 4x4 to 8 ndf + norm + LeakyReLU; and a conv 4x4 to one logit per patch (least squares
    GAN: no sigmoid). Every conv has a bias and zero-pads by 1; a 256 px input gives 30x30 logits.
    """

    def __init__(self, ndf: int = 64, n_layers: int = 3, channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(channels, ndf, kernel_size=4, padding=1),
            nn.LeakyReLU(0.2),
            BlurDownsample(),
        ]
        width = ndf
        for n in range(1, n_layers):
            next_width = ndf * min(2**n, 8)
            layers += [
                nn.Conv2d(width, next_width, kernel_size=4, padding=1),
                nn.InstanceNorm2d(next_width),
                nn.LeakyReLU(0.2),
                BlurDownsample(),
            ]
            width = next_width
        last_width = ndf * min(2**n_layers, 8)
        layers += [
            nn.Conv2d(width, last_width, kernel_size=4, padding=1),
            nn.InstanceNorm2d(last_width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(last_width, 1, kernel_size=4, padding=1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class PatchSampleMLP(nn.Module):
    """CUT's `mlp_sample` head: samples feature vectors at random positions and projects them to unit vectors.

    One MLP (Linear, ReLU, Linear; nc channels) per feature layer. CUT builds the MLPs on the first forward call,
    after its optimiser and any DDP wrapper were made, so neither sees them without special casing; here they are
    built with the module, and `in_channels` comes from Generator.feature_channels.
    """

    def __init__(self, in_channels: Sequence[int], nc: int = 256) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(channels, nc), nn.ReLU(), nn.Linear(nc, nc)) for channels in in_channels
        )

    def forward(
        self,
        features: Sequence[Tensor],
        num_patches: int,
        patch_ids: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Sample, project and L2-normalise num_patches positions of every feature map.

        features: one (B, C, H, W) map per MLP. The positions are drawn without replacement (at most H*W of them),
        from `generator` when given (on its own device, so a CPU generator draws the same positions whatever
        device the features are on), and shared by every image of the batch, as in CUT. Pass the returned
        patch_ids back in to sample the same positions from other features (the keys of PatchNCE).
        Returns (samples, patch_ids): samples[i] is (B * num_patches, nc), image by image, patch_ids[i] the
        positions (flat indices into H*W) used for layer i.
        """
        if len(features) != len(self.mlps):
            raise ValueError(f"PatchSampleMLP has {len(self.mlps)} MLPs but got {len(features)} feature maps")
        if patch_ids is not None and len(patch_ids) != len(features):
            raise ValueError(f"got {len(patch_ids)} sets of patch ids for {len(features)} feature maps")
        samples, used_ids = [], []
        for index, (feature, mlp) in enumerate(zip(features, self.mlps)):
            batch, channels, height, width = feature.shape
            vectors = feature.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
            if patch_ids is None:
                device = generator.device if generator is not None else feature.device
                ids = torch.randperm(height * width, generator=generator, device=device)[:num_patches]
                ids = ids.to(feature.device, non_blocking=True)  # no wait for the GPU's queue to drain
            else:
                ids = patch_ids[index]
            projected = mlp(vectors[:, ids, :].flatten(0, 1))
            # CUT's Normalize: divide by the norm plus 1e-7 (not clamped like F.normalize).
            samples.append(projected / (projected.norm(dim=1, keepdim=True) + 1e-7))
            used_ids.append(ids)
        return samples, used_ids
