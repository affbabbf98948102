"""Compression: pruning reaches the configured sparsity, int8 shrinks the model, predictions stay close."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.common import StageError
from stages.compress import prune_linear, serialized_bytes
from stages.model import quantize_int8


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4))


def test_pruning_reaches_the_sparsity():
    small = prune_linear(model(), sparsity=0.5)
    weights = torch.cat([m.weight.flatten() for m in small.modules() if isinstance(m, nn.Linear)])
    assert (weights == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_int8_shrinks_and_keeps_predictions_close():
    original = model().eval()
    small = quantize_int8(prune_linear(original, sparsity=0.0))
    assert serialized_bytes(small) < 0.4 * serialized_bytes(original)
    x = torch.randn(256, 64)
    with torch.inference_mode():
        agree = (original(x).argmax(1) == small(x).argmax(1)).float().mean().item()
    assert agree > 0.95


def test_original_is_untouched():
    original = model()
    before = original[0].weight.clone()
    quantize_int8(prune_linear(original, sparsity=0.5))
    assert torch.equal(original[0].weight, before)


def test_bad_sparsity_names_the_key():
    with pytest.raises(StageError, match="compress.sparsity"):
        prune_linear(model(), sparsity=1.0)


def test_saved_compressed_model_reloads_as_the_same_int8_model(tmp_path):
    """The folder compress writes holds pruned weights in safetensors; loading re-applies int8 quantisation."""
    from stages.modalities import get_modality
    from stages.model import Classifier, is_int8, load_classifier, make_head, predict_proba, save_classifier

    spec = {"backbone": "minilm_l6", "max_length": 16, "pooling": "mean"}
    backbone = get_modality("text").build_backbone(spec, pretrained=True)
    torch.manual_seed(0)
    original = Classifier(backbone, make_head(backbone.feature_dim, 2, hidden=0, dropout=0.0)).eval()
    config = {"modality": "text", "spec": spec, "labels": ["ham", "spam"], "feature_dim": backbone.feature_dim,
              "head": {"hidden": 0, "dropout": 0.0}, "compression": {"sparsity": 0.3, "quantize": True}}
    save_classifier(tmp_path, prune_linear(original, sparsity=0.3), config)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.bin"))
    loaded, loaded_config, modality = load_classifier(tmp_path)
    assert is_int8(loaded) and not is_int8(original) and loaded_config["compression"]["quantize"]
    texts = ["win a free prize now", "see you at lunch", "call now to claim cash"]
    in_memory = quantize_int8(prune_linear(original, sparsity=0.3))
    # predict_proba runs int8 models on CPU without autocast; the result equals the in-memory compressed model's
    ours = predict_proba(loaded, modality, spec, texts, batch_size=2, device=torch.device("cpu"))
    reference = predict_proba(in_memory, modality, spec, texts, batch_size=2, device=torch.device("cpu"))
    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(reference))
