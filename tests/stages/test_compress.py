"""Compression: pruning reaches the configured sparsity, int8 shrinks the model, predictions stay close."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.common import StageError
from stages.compress import compress, serialized_bytes


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4))


def test_pruning_reaches_the_sparsity():
    small = compress(model(), sparsity=0.5, quantize=False)
    weights = torch.cat([m.weight.flatten() for m in small.modules() if isinstance(m, nn.Linear)])
    assert (weights == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_int8_shrinks_and_keeps_predictions_close():
    original = model().eval()
    small = compress(original, sparsity=0.0, quantize=True)
    assert serialized_bytes(small) < 0.4 * serialized_bytes(original)
    x = torch.randn(256, 64)
    with torch.inference_mode():
        agree = (original(x).argmax(1) == small(x).argmax(1)).float().mean().item()
    assert agree > 0.95


def test_original_is_untouched():
    original = model()
    before = original[0].weight.clone()
    compress(original, sparsity=0.5, quantize=True)
    assert torch.equal(original[0].weight, before)


def test_bad_sparsity_names_the_key():
    with pytest.raises(StageError, match="compress.sparsity"):
        compress(model(), sparsity=1.0, quantize=True)
