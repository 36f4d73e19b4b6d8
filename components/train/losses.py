"""The FastCUT losses: PatchNCE (Park et al. 2020, eq. 2-3) and the least squares GAN loss (Mao et al. 2017).

Mathematics as in the official CUT code (models/patchnce.py, GANLoss 'lsgan'), with its batch-size bug fixed.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

# CUT writes this logit, before the temperature, where a query meets its own key among the negatives:
# exp(-10 / 0.07) ~ 1e-62, so that entry drops out of the softmax (it is the positive, not a negative).
SAME_PATCH_LOGIT = -10.0


def patch_nce_loss(query: Tensor, key: Tensor, batch_size: int, temperature: float = 0.07) -> Tensor:
    """The PatchNCE loss of every query patch: a (batch_size * num_patches,) tensor, to be averaged by the caller.

    query, key: (batch_size * num_patches, nc) L2-normalised projections, image by image, row i of both taken at
    the same position (PatchSampleMLP's output for G(x) and for x with the same patch ids). Each query is
    classified among 1 + (num_patches - 1) keys: its own key (the positive, class 0) and the keys of the other
    patches of the SAME image (CUT's default for CUT and FastCUT, nce_includes_all_negatives_from_minibatch
    False), with logits = cosine similarity / temperature. Gradients flow into the query only; the key is
    detached. batch_size is the number of images these rows come from on this device: CUT used the configured
    batch size there, which broke the last short batch and multi-GPU runs.
    """
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"query and key must be two (rows, nc) matrices of one shape, got {tuple(query.shape)} "
                         f"and {tuple(key.shape)}")
    rows, nc = query.shape
    if batch_size < 1 or rows % batch_size:
        raise ValueError(f"{rows} patch rows cannot come from {batch_size} images (rows must be a multiple of it)")
    num_patches = rows // batch_size
    # bfloat16 resolves logits near 1/0.07 = 14 only to 1/16: compute in float32 even under autocast (it is tiny).
    with torch.autocast(device_type=query.device.type, enabled=False):
        query, key = query.float(), key.detach().float()
        positive = (query * key).sum(dim=1, keepdim=True)  # (rows, 1)
        per_image_query = query.view(batch_size, num_patches, nc)
        per_image_key = key.view(batch_size, num_patches, nc)
        negatives = torch.bmm(per_image_query, per_image_key.transpose(1, 2))  # (B, P, P): patch i vs patch j
        same_patch = torch.eye(num_patches, dtype=torch.bool, device=query.device)
        negatives = negatives.masked_fill(same_patch, SAME_PATCH_LOGIT).view(rows, num_patches)
        logits = torch.cat([positive, negatives], dim=1) / temperature
        positive_class = torch.zeros(rows, dtype=torch.long, device=query.device)
        return F.cross_entropy(logits, positive_class, reduction="none")


def lsgan_loss(prediction: Tensor, target_is_real: bool) -> Tensor:
    """Least squares GAN loss: the mean squared distance of the discriminator's logits to 1 (real) or 0 (fake)."""
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)
