"""The generator file, `generator.pt`: what `locgen train` writes beside its checkpoints and the
export stage loads (the generator's weights, its shape and its lineage, tensors only).

Its own module so that the export stage needs the generator network and this file format, not the
training loop.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle

import torch

from components.core.errors import LocgenError, one_line
from components.core.storage import open_file_uri
from components.pretrained import BUNDLED_GENERATOR
from components.train.networks import Generator

GENERATOR_KEY = "generator.pt"
BUNDLED = "bundled"  # names the bundled generator where a model file is asked for


def load_generator(uri: str | os.PathLike[str] | None = None) -> tuple[Generator, dict]:
    """A generator export (generator.pt of locgen train, local or s3://) in eval mode, and its metadata.

    None (or the word `bundled`): the bundled pretrained generator (components/pretrained), what
    generation uses when no model is given.
    """
    fix = f"give the {GENERATOR_KEY} that locgen train wrote"
    export, label, sha256 = read_model_file(uri, "generator", fix)
    if not isinstance(export, dict) or "generator" not in export:
        raise LocgenError(f"{label}: not a generator export; {fix}, not a checkpoint")
    generator = Generator(export["ngf"], export["n_blocks"])
    generator.load_state_dict(export.pop("generator"))
    # Names the exact file in the lineage of what is made from it (ONNX models, generated tiles).
    export.update(uri=label, sha256=sha256)
    return generator.eval(), export


def read_model_file(uri: str | os.PathLike[str] | None, what: str, fix: str) -> tuple[object, str, str]:
    """What a model file (local or s3://; None or `bundled`: the bundled generator) holds, on the CPU,
    with its label (the same on every machine for the bundled one) and the sha256 of its bytes."""
    bundled = uri is None or os.fspath(uri) == BUNDLED
    label = f"{BUNDLED}:{BUNDLED_GENERATOR.name}" if bundled else os.fspath(uri)
    store, key = open_file_uri(BUNDLED_GENERATOR if bundled else uri)
    raw = store.get_bytes(key)
    return load_torch(raw, store.url(key), torch.device("cpu"), what, fix), label, hashlib.sha256(raw).hexdigest()


def load_torch(raw: bytes, uri: str, device: torch.device, what: str, fix: str):
    """What torch.save wrote into `raw` (tensors only, on `device`); an unreadable file is one clear error."""
    try:
        return torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        # its first sentence (torch's go on for lines); an empty file's EOFError says nothing
        reason = one_line(error).split(". ")[0][:200] or type(error).__name__
        raise LocgenError(f"{uri}: not a readable {what} ({reason}); {fix}") from None
