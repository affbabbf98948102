"""Pretrained-encoder features through the modality's backbone, and the local store that label and train share.

The label stage encodes every row to check labels; train's frozen-backbone strategies (`probe`, `head`) need the
same encoder's features of the train and val rows. With the same encoder spec (params.yaml `label.encoder` and
`train.model`) train reads them from the store instead of encoding the rows a second time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

# Outside DVC on purpose: a cache, not data (a store that is absent or stale costs time, never a different result).
FEATURE_STORE = Path(".cache/features")


def extract(modality: Any, spec: dict[str, Any], payloads: Sequence[Any], *, batch_size: int,
            desc: str | None = None, engine: Any = None) -> np.ndarray:
    """Frozen-backbone features `(n, feature_dim)` for `payloads`, in bf16 autocast on the chosen device.

    With an `engine` (stages/engine) the batches run where it says, one encoder per worker; each batch holds
    the same rows as here, so the features do not depend on it.
    """
    if engine is not None and engine.distributed and len(payloads):
        parts = engine.map_chunks(partial(encoder, modality, spec, batch_size=batch_size), list(payloads),
                                  chunk_size=batch_size)
        return np.concatenate(parts).astype(np.float32)
    encode = encoder(modality, spec, batch_size=batch_size, desc=desc)
    return encode(list(payloads))


def encoder(modality: Any, spec: dict[str, Any], *, batch_size: int,
            desc: str | None = None) -> Callable[[list[Any]], np.ndarray]:
    """Load the frozen backbone once; return the function that encodes a list of payloads with it."""
    import torch

    from stages.model import batched_forward, choose_device

    device = choose_device()
    backbone = modality.build_backbone(spec, pretrained=True).to(device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)

    def encode(payloads: list[Any]) -> np.ndarray:
        if len(payloads) == 0:
            return np.zeros((0, backbone.feature_dim), dtype=np.float32)
        with torch.inference_mode():
            return batched_forward(backbone, modality, spec, payloads, backbone, batch_size=batch_size,
                                   device=device, desc=desc)

    return encode


def store_path(store: Path | str, name: str, modality: Any, spec: dict[str, Any]) -> Path:
    """The store's file for `name` (a task) under this encoder: one file per feature-relevant spec, so a label
    encoder and a train model that differ do not overwrite each other's rows."""
    key = json.dumps(modality.feature_spec(spec), sort_keys=True)
    return Path(store) / f"{name}-{modality.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"


def cached_extract(modality: Any, spec: dict[str, Any], ids: Sequence[str], payloads: Sequence[Any], *,
                   batch_size: int, cache_path: Any, desc: str | None = None, prune: bool = True,
                   engine: Any = None) -> np.ndarray:
    """`extract`, reusing rows already in the `.npz` cache at `cache_path` (same ids, same encoder spec).

    Ids are content hashes, so a cached row is the same payload. Only new rows go through the encoder,
    which keeps a relabelling rerun (new annotations, same data) to the cost of the classifier. With `prune`
    (the label stage, which sees every row) the cache is rewritten with exactly the current rows; without it
    (train, which reads a subset) new rows are added and the rest kept. A cache that cannot be read is rebuilt.
    """
    from stages.common import atomic_path

    key = json.dumps(modality.feature_spec(spec), sort_keys=True)
    cache_path = Path(cache_path)
    cached: dict[str, np.ndarray] = {}
    if cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as z:
                if str(z["spec"]) == key:
                    cached = dict(zip(z["ids"].tolist(), z["features"]))
        except (OSError, ValueError, KeyError):
            cached = {}
    missing = [i for i, item in enumerate(ids) if item not in cached]
    new = extract(modality, spec, [payloads[i] for i in missing], batch_size=batch_size, desc=desc, engine=engine)
    for i, row in zip(missing, new):
        cached[ids[i]] = row
    dim = new.shape[1] if len(missing) else (len(next(iter(cached.values()))) if cached else 0)
    features = np.stack([cached[item] for item in ids]).astype(np.float32) if len(ids) else np.zeros((0, dim), np.float32)
    if prune or missing:
        kept = list(ids) if prune else list(cached)
        stored = features if prune else np.stack([cached[item] for item in kept]).astype(np.float32)
        with atomic_path(cache_path) as tmp, tmp.open("wb") as fh:
            np.savez(fh, ids=np.array(kept, dtype=str), features=stored, spec=np.array(key))
    return features
