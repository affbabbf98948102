"""Counter-based CPU dropout: the mask's statistics, repeatability, and that it swaps in and out cleanly."""

import pytest
import torch
from torch import nn

from stages.dropout import ATTENTION_NAME, CounterDropout, counter_sdpa, fast_dropout, keep_mask
from stages.modalities import get_modality


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_keeps_one_minus_p(p):
    mask = keep_mask((64, 1024), p, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (64, 1024)
    assert abs(mask.float().mean().item() - (1 - p)) < 0.01
    # neighbouring elements are not correlated: P(both kept) ~ (1-p)^2
    both = (mask[:, :-1] & mask[:, 1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 0.01


def test_masks_differ_per_call_and_repeat_under_manual_seed():
    torch.manual_seed(3)
    first, second = keep_mask((4096,), 0.1, torch.device("cpu")), keep_mask((4096,), 0.1, torch.device("cpu"))
    assert not torch.equal(first, second)
    torch.manual_seed(3)
    assert torch.equal(keep_mask((4096,), 0.1, torch.device("cpu")), first)


def test_counter_dropout_matches_nn_dropout_in_expectation_and_eval():
    layer = CounterDropout(0.2)
    x = torch.ones(200_000)
    out = layer.train()(x)
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.8)]
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(layer.eval()(x), x)


def _text_classifier():
    from stages.model import Classifier, make_head

    backbone = get_modality("text").build_backbone({"backbone": "minilm_l6", "max_length": 16, "pooling": "mean"},
                                                   pretrained=True)
    return Classifier(backbone, make_head(backbone.feature_dim, 3, hidden=0, dropout=0.1))


def test_attention_math_path_equals_sdpa_without_dropout():
    classifier = _text_classifier()
    batch = classifier.backbone.tokenizer(["a short one", "a somewhat longer sentence with padding after it"],
                                          padding=True, return_tensors="pt")
    batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
    layer = classifier.backbone.encoder.encoder.layer[0].attention.self
    hidden = torch.randn(2, batch["input_ids"].shape[1], 384)
    q, k, v = (proj(hidden).view(2, -1, 12, 32).transpose(1, 2) for proj in (layer.query, layer.key, layer.value))
    mask = torch.zeros(2, 1, 1, q.shape[2])
    mask[0, ..., 4:] = float("-inf")
    layer.train()
    # p below 1/65536 keeps every element: the math path must equal SDPA's result exactly up to float error
    ours, _ = counter_sdpa(layer, q, k, v, mask, dropout=1e-9, scaling=32 ** -0.5)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=32 ** -0.5)
    torch.testing.assert_close(ours, reference.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_fast_dropout_swaps_in_for_training_and_restores_the_model():
    classifier = _text_classifier()
    batch = classifier.backbone.tokenizer(["one text", "another text here"], padding=True, return_tensors="pt")
    batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
    before = classifier.eval()(batch)
    n_dropout = sum(type(m) is nn.Dropout for m in classifier.modules())
    with fast_dropout(classifier, torch.device("cpu")) as swapped:
        assert swapped == n_dropout + 1  # every nn.Dropout and the encoder's attention
        assert not any(type(m) is nn.Dropout for m in classifier.modules())
        assert classifier.backbone.encoder.config._attn_implementation == ATTENTION_NAME
        classifier.train()
        torch.manual_seed(0)
        first = classifier(batch)
        torch.manual_seed(0)
        assert torch.equal(classifier(batch), first)  # repeatable under a seed
        assert not torch.allclose(first, classifier(batch))  # and dropout is really on
        first.sum().backward()
        assert classifier.backbone.encoder.encoder.layer[0].attention.self.query.weight.grad is not None
    assert sum(type(m) is nn.Dropout for m in classifier.modules()) == n_dropout
    assert classifier.backbone.encoder.config._attn_implementation == "sdpa"
    torch.testing.assert_close(classifier.eval()(batch), before)


def test_fast_dropout_leaves_cuda_training_alone():
    classifier = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    with fast_dropout(classifier, torch.device("cuda")) as swapped:
        assert swapped == 0 and type(classifier[1]) is nn.Dropout
