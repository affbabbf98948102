"""Pretrained-encoder features for label checking, through the modality's backbone (the one train uses)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def extract(modality: Any, spec: dict[str, Any], payloads: Sequence[Any], *, batch_size: int,
            desc: str | None = None) -> np.ndarray:
    """Frozen-backbone features `(n, feature_dim)` for `payloads`, in bf16 autocast on the chosen device."""
    import torch

    from stages.model import batched_forward, choose_device

    device = choose_device()
    backbone = modality.build_backbone(spec, pretrained=True).to(device).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    if len(payloads) == 0:
        return np.zeros((0, backbone.feature_dim), dtype=np.float32)
    with torch.inference_mode():
        return batched_forward(backbone, modality, spec, list(payloads), backbone, batch_size=batch_size,
                               device=device, desc=desc)


def cached_extract(modality: Any, spec: dict[str, Any], ids: Sequence[str], payloads: Sequence[Any], *,
                   batch_size: int, cache_path: Any, desc: str | None = None) -> np.ndarray:
    """`extract`, reusing rows already in the `.npz` cache at `cache_path` (same ids, same encoder spec).

    Ids are content hashes, so a cached row is the same payload. Only new rows go through the encoder,
    which keeps a relabelling rerun (new annotations, same data) to the cost of the classifier. The
    cache is rewritten with exactly the current rows; a cache that cannot be read is rebuilt.
    """
    import json
    from pathlib import Path

    from stages.common import atomic_path

    key = json.dumps(spec, sort_keys=True)
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
    new = extract(modality, spec, [payloads[i] for i in missing], batch_size=batch_size, desc=desc)
    for i, row in zip(missing, new):
        cached[ids[i]] = row
    dim = new.shape[1] if len(missing) else (len(next(iter(cached.values()))) if cached else 0)
    features = np.stack([cached[item] for item in ids]).astype(np.float32) if len(ids) else np.zeros((0, dim), np.float32)
    with atomic_path(cache_path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, ids=np.array(list(ids), dtype=str), features=features, spec=np.array(key))
    return features
