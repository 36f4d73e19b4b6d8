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

from components.core.errors import LocgenError
from components.core.storage import open_file_uri
from components.pretrained import BUNDLED_GENERATOR
from components.train.networks import Generator

GENERATOR_KEY = "generator.pt"


def load_generator(uri: str | os.PathLike[str] | None = None) -> tuple[Generator, dict]:
    """A generator export (generator.pt of locgen train, local or s3://) in eval mode, and its metadata.

    None: the bundled pretrained generator (components/pretrained), what generation uses when no
    model is given.
    """
    label = f"bundled:{BUNDLED_GENERATOR.name}" if uri is None else os.fspath(uri)  # the same on every machine
    uri = BUNDLED_GENERATOR if uri is None else uri
    store, key = open_file_uri(uri)
    raw = store.get_bytes(key)
    export = load_torch(raw, store.url(key), torch.device("cpu"), "generator",
                         f"give the {GENERATOR_KEY} that locgen train wrote")
    if not isinstance(export, dict) or "generator" not in export:
        raise LocgenError(f"{uri}: not a generator export; give the {GENERATOR_KEY} that locgen train wrote, "
                          f"not a checkpoint")
    generator = Generator(export["ngf"], export["n_blocks"])
    generator.load_state_dict(export.pop("generator"))
    # Names the exact file in the lineage of what is made from it (ONNX models, generated tiles).
    export.update(uri=label, sha256=hashlib.sha256(raw).hexdigest())
    return generator.eval(), export


def load_torch(raw: bytes, uri: str, device: torch.device, what: str, fix: str):
    """What torch.save wrote into `raw` (tensors only, on `device`); an unreadable file is one clear error."""
    try:
        return torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise LocgenError(f"{uri}: not a readable {what} ({str(error).splitlines()[0]}); {fix}") from None
