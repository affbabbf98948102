"""Training core: search space, early stopping with best-epoch restore, pruning, strategies."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from stages.common import StageError
from stages.modalities import get_modality
from stages.train import PrunerParams, task_train_params
from stages.training.finetune import FullStrategy, ScratchStrategy
from stages.training.frozen import HeadStrategy, ProbeStrategy, class_weights
from stages.training.loop import fit_epochs, lr_factor, score
from stages.training.strategy import SplitData, get_strategy, strategy_choices, strategy_spec
from stages.training.study import (
    best_hyperparameters,
    choose_strategy,
    first_trials,
    history_csv,
    journal_lock,
    leaderboard,
    make_pruner,
    recover_stale_trials,
    run_trial,
    study_name,
    suggest,
)
from tests.conftest import dead_worker, live_worker, png_bytes

HEAD_HP = {"lr": 1e-2, "batch_size": 8, "weight_decay": 0.0, "max_epochs": 4, "head_hidden": 0, "dropout": 0.0}


def journal_study(tmp_path, pruner=None) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal")))
    return optuna.create_study(storage=storage, direction="maximize", pruner=pruner or optuna.pruners.NopPruner(),
                               sampler=optuna.samplers.TPESampler(seed=0))


def test_suggest_covers_every_declared_type(tmp_path):
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "epochs": {"type": "int", "low": 2, "high": 5},
             "hidden": {"type": "categorical", "choices": [0, 64]}}
    trial = journal_study(tmp_path).ask()
    values = suggest(trial, space)
    assert 1e-4 <= values["lr"] <= 1e-2 and 2 <= values["epochs"] <= 5 and values["hidden"] in (0, 64)


def test_suggest_rejects_unknown_type(tmp_path):
    with pytest.raises(StageError, match="lr.type"):
        suggest(journal_study(tmp_path).ask(), {"lr": {"type": "loguniform"}})


@pytest.mark.parametrize("metric,expected", [("accuracy", 0.75), ("macro_f1", pytest.approx(0.7333, abs=1e-4))])
def test_score(metric, expected):
    assert score(metric, np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0])) == expected


def scripted_fit(values: list, *, max_epochs: int, patience: int):
    """`fit_epochs` on a tiny module whose `evaluate` returns `values` in turn: its result, the module, the weights
    at each evaluation (by the value returned) and what each epoch logged."""
    torch.manual_seed(0)
    module = torch.nn.Linear(2, 2)
    scripted = iter(values)
    snapshots, logged = {}, []

    def evaluate():
        value = next(scripted)
        snapshots[value] = module.weight.detach().clone()
        return value

    def batches(epoch):
        yield torch.randn(4, 2), torch.tensor([0, 1, 0, 1])

    result = fit_epochs(module, batches=batches, evaluate=evaluate, lr=0.5, weight_decay=0.0, max_epochs=max_epochs,
                        patience=patience, device=torch.device("cpu"), on_epoch=lambda e, m: logged.append((e, m)))
    return result, module, snapshots, logged


def test_fit_epochs_restores_best_epoch_and_stops_early():
    # best at epoch 1, then 3 worse epochs
    result, module, snapshots, logged = scripted_fit([0.2, 0.9, 0.5, 0.4, 0.3, 0.1], max_epochs=6, patience=3)
    assert result == (0.9, 1, 5)
    assert [epoch for epoch, _ in logged] == [0, 1, 2, 3, 4]
    assert torch.equal(module.weight.detach(), snapshots[0.9])


def test_a_tied_metric_goes_to_the_lower_val_loss_and_keeps_training():
    """A saturated val metric (1.0 from epoch 1 on) with a falling val loss: each tie with a lower loss is the new
    best and resets patience; the first tie with a higher loss is not."""
    values = [(0.8, 0.9), (1.0, 0.5), (1.0, 0.4), (1.0, 0.3), (1.0, 0.35), (1.0, 0.36), (1.0, 0.2)]
    result, module, snapshots, logged = scripted_fit(values, max_epochs=7, patience=2)
    assert result == (1.0, 3, 6)  # epochs 4 and 5 tie with higher losses: patience runs out
    assert torch.equal(module.weight.detach(), snapshots[(1.0, 0.3)])
    assert [m["val_loss"] for _, m in logged] == [0.9, 0.5, 0.4, 0.3, 0.35, 0.36]


@pytest.fixture
def learning_rates(monkeypatch) -> list[float]:
    """The learning rate of every real AdamW step taken while the test runs, in order."""
    seen: list[float] = []
    original_step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)  # observes the real optimiser's learning rate
    return seen


@pytest.mark.parametrize("schedule,expected", [("constant", [0.1, 0.1, 0.1, 0.1]),
                                               ("cosine", [0.1, 0.085355, 0.05, 0.014645])])
def test_fit_epochs_sets_the_learning_rate_per_epoch(schedule, expected, learning_rates):
    module, seen = torch.nn.Linear(2, 2), learning_rates

    def batches(epoch):
        yield torch.randn(4, 2), torch.tensor([0, 1, 0, 1])

    fit_epochs(module, batches=batches, evaluate=lambda: 0.5, lr=0.1, weight_decay=0.0, max_epochs=4,
               patience=10, device=torch.device("cpu"), on_epoch=lambda e, m: None, lr_schedule=schedule)
    assert seen == pytest.approx(expected, abs=1e-6)


def test_warmup_cosine_ramps_up_then_decays_to_zero_and_runs_per_step(learning_rates):
    assert [lr_factor("warmup_cosine", e, 10) for e in (0, 1, 2, 6, 10)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    module, seen = torch.nn.Linear(2, 2), learning_rates

    def batches(epoch):
        for _ in range(5):
            yield torch.randn(4, 2), torch.tensor([0, 1, 0, 1])

    fit_epochs(module, batches=batches, evaluate=lambda: 0.5, lr=0.1, weight_decay=0.0, max_epochs=2, patience=10,
               device=torch.device("cpu"), on_epoch=lambda e, m: None, lr_schedule="warmup_cosine", steps_per_epoch=5)
    # 10 steps: 2 of warmup (0, 0.05), then the cosine from the peak down towards 0, a new rate at every step
    assert len(seen) == 10 and seen[:3] == pytest.approx([0.0, 0.05, 0.1])
    assert all(a > b for a, b in zip(seen[2:], seen[3:])) and seen[-1] < 0.01


def test_one_cycle_is_torchs_one_cycle_per_step_with_beta1_cycled_against_the_rate(monkeypatch):
    seen: list[tuple[float, float]] = []
    original_step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append((self.param_groups[0]["lr"], self.param_groups[0]["betas"][0]))
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    module = torch.nn.Linear(2, 2)

    def batches(epoch):
        for _ in range(5):
            yield torch.randn(4, 2), torch.tensor([0, 1, 0, 1])

    # 3 epochs of a 4-epoch horizon: the schedule is the horizon's, cut short, never stepped past its end
    fit_epochs(module, batches=batches, evaluate=lambda: 0.5, lr=0.1, weight_decay=0.0, max_epochs=3, patience=10,
               device=torch.device("cpu"), on_epoch=lambda e, m: None, lr_schedule="one_cycle", steps_per_epoch=5,
               schedule_epochs=4)
    rates, beta1 = [r for r, _ in seen], [b for _, b in seen]
    assert len(seen) == 15 and rates[0] == pytest.approx(0.1 / 25) and beta1[0] == pytest.approx(0.95)
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(0.1) and beta1[peak] == pytest.approx(0.85) and 2 <= peak <= 4  # 20% of 20
    assert all(a < b for a, b in zip(rates[:peak], rates[1:peak + 1]))
    assert all(a > b for a, b in zip(rates[peak:], rates[peak + 1:]))
    assert all(a < b for a, b in zip(beta1[peak:], beta1[peak + 1:]))
    # the full horizon ends at lr / 25e4 with beta1 back at 0.95, and a longer run does not step past the end
    seen.clear()
    fit_epochs(module, batches=batches, evaluate=lambda: 0.5, lr=0.1, weight_decay=0.0, max_epochs=4, patience=10,
               device=torch.device("cpu"), on_epoch=lambda e, m: None, lr_schedule="one_cycle", steps_per_epoch=5)
    assert len(seen) == 20 and seen[-1][0] < 0.1 / 25e3 and seen[-1][1] == pytest.approx(0.95, abs=1e-3)


def test_balanced_class_weights_make_a_rare_class_count_as_much_as_a_common_one():
    labels = torch.tensor([0] * 90 + [1] * 10)
    assert class_weights(labels, 2, "none") is None
    weights = class_weights(labels, 2, "balanced")
    assert weights.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])
    assert float((weights[labels]).sum()) == pytest.approx(100.0)  # each class's total weight is n / k
    with pytest.raises(StageError, match="class_weight: 'inverse' is not one of"):
        class_weights(labels, 2, "inverse")


def test_refit_horizon_keeps_the_trials_schedule():
    # a refit that stops after 2 of the trial's 8 epochs sees the trial's learning rates, not a faster decay
    assert [lr_factor("cosine", e, 8) for e in range(2)] == pytest.approx([1.0, 0.9619398])
    with pytest.raises(StageError, match="lr_schedule: unknown schedule 'linear'"):
        lr_factor("linear", 0, 8)


def test_a_lock_left_by_a_killed_writer_is_a_plain_file_dvc_can_hash(tmp_path, monkeypatch):

    monkeypatch.chdir(tmp_path)  # dvc.yaml passes relative paths, as here
    journal = Path("models/x/study/journal.log")
    journal.parent.mkdir(parents=True)
    journal.write_text("")
    journal_lock(journal).acquire()  # and never released, as after kill -9
    lock = Path(f"{journal}.lock")
    assert lock.is_file() and not lock.is_symlink()
    os.stat(lock)  # what DVC does when it hashes the study folder


def test_recovery_fails_and_retries_dead_trials_even_those_killed_before_sampling(tmp_path):
    worker = dead_worker()
    study = journal_study(tmp_path)
    sampled = study.ask()
    sampled.suggest_float("lr", 1e-4, 1e-2)
    sampled.set_user_attr("worker", worker)
    unsampled = study.ask()  # killed between ask and its first suggest
    unsampled.set_user_attr("worker", worker)
    alive = study.ask()
    alive.set_user_attr("worker", live_worker())

    assert recover_stale_trials(study) == [sampled.number, unsampled.number]

    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials[:3]] == ["FAIL", "FAIL", "RUNNING"]
    waiting = trials[3:]
    assert [t.state.name for t in waiting] == ["WAITING", "WAITING"]
    assert [t.user_attrs["retry_of"] for t in waiting] == [sampled.number, unsampled.number]
    retry = study.ask()
    retry.set_user_attr("worker", alive.user_attrs["worker"])
    assert retry.suggest_float("lr", 1e-4, 1e-2) == sampled.params["lr"]
    assert recover_stale_trials(study) == []  # a second restart does not retry them again


def test_median_pruner_prunes_a_bad_trial(tmp_path):
    study = journal_study(tmp_path, make_pruner(PrunerParams("median", n_startup_trials=1, n_warmup_steps=0)))

    class Scripted:
        def __init__(self, curve):
            self.curve = curve

        def fit(self, hp, on_epoch, *, seed):
            for epoch, value in enumerate(self.curve):
                on_epoch(epoch, {"val_metric": value, "train_loss": 1.0})
            raise AssertionError("a pruned trial must not finish")

    good = study.ask()
    for epoch, value in enumerate([0.8, 0.9, 0.95]):
        good.report(value, epoch)
    study.tell(good, 0.95)
    bad = study.ask()
    with pytest.raises(optuna.TrialPruned):
        run_trial(bad, Scripted([0.1, 0.1, 0.1]), {}, seed=0, on_epoch=lambda e, m: None)


def test_unknown_strategy_and_pruner_fail_with_the_key():
    with pytest.raises(StageError, match="train.strategy"):
        get_strategy("lora9000")
    with pytest.raises(StageError, match="train.pruner.kind"):
        make_pruner(PrunerParams("random", 0, 0))


def test_a_task_overrides_train_keys_for_itself_only():
    import yaml

    params = yaml.safe_load(Path("params.yaml").read_text())
    shared = params["train"]["search"]["hybrid"]["class_weight"]
    params["tasks"]["news"]["train"] = {"n_trials": 3, "search": {"hybrid": {"class_weight": {
        "type": "fixed", "value": "balanced"}}}}
    news, animals = task_train_params(params, "news"), task_train_params(params, "animals")
    assert news.n_trials == 3 and news.search["hybrid"]["class_weight"]["value"] == "balanced"
    assert news.search["hybrid"]["l2"] == params["train"]["search"]["hybrid"]["l2"]  # siblings kept
    assert news.search["probe"] == params["train"]["search"]["probe"]
    assert animals.n_trials == params["train"]["n_trials"] and animals.search["hybrid"]["class_weight"] == shared
    assert params["train"]["search"]["hybrid"]["class_weight"] == shared  # the shared section is not touched
    params["tasks"]["news"]["train"] = {"n_trails": 3}
    with pytest.raises(StageError, match=r"tasks.news.train.*n_trails"):
        task_train_params(params, "news")
    params["tasks"]["news"]["train"] = [1]
    with pytest.raises(StageError, match="tasks.news.train: expected a mapping"):
        task_train_params(params, "news")


def test_study_name_is_deterministic_and_tracks_space():
    class P:
        strategy, metric, patience, model, scratch_model = "head", "macro_f1", 3, {}, {}
        pruner = PrunerParams("median", 1, 1)
        search = {"head": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "scratch": {}}

    class Q(P):
        search = {"head": {"lr": {"type": "float", "low": 1e-5, "high": 1e-2}}, "scratch": {}}

    head = ["head"]
    assert study_name("news", "abcdef0123", P, 1, head) == study_name("news", "abcdef0123", P, 1, head)
    assert study_name("news", "abcdef0123", P, 1, head) != study_name("news", "abcdef0123", Q, 1, head)
    assert study_name("news", "abcdef0123", P, 1, head) != study_name("news", "99cdef0123", P, 1, head)
    assert study_name("news", "abcdef0123", P, 1, head) != study_name("news", "abcdef0123", P, 2, head)
    assert study_name("news", "abcdef0123", P, 1, head) != study_name("news", "abcdef0123", P, 1, ["head", "scratch"])


def _text_data() -> SplitData:
    spam = ["win a free prize now call", "claim your cash reward today", "free entry txt win now"]
    ham = ["see you at lunch", "are we still meeting later", "thanks for dinner last night"]
    texts = spam * 3 + ham * 3
    labels = np.array([1] * 9 + [0] * 9)
    return SplitData(texts, labels, spam + ham, np.array([1, 1, 1, 0, 0, 0]))


def test_head_strategy_learns_on_minilm_features():
    spec = {"backbone": "minilm_l6", "max_length": 16, "pooling": "mean"}
    strategy = HeadStrategy(get_modality("text"), spec, _text_data(), metric="accuracy", patience=3,
                            device=torch.device("cpu"), feature_batch_size=8)
    result = strategy.fit({**HEAD_HP, "max_epochs": 15}, lambda e, m: None, seed=0)
    assert result.best_metric == 1.0
    assert not any(p.requires_grad for p in result.model.backbone.parameters())


def test_frozen_strategies_read_the_rows_label_stored_and_add_only_missing_ones(tmp_path):
    from stages.labeling.features import cached_extract, store_path

    text = get_modality("text")
    label_spec = {"backbone": "minilm_l6", "max_length": 16, "pooling": "mean"}
    train_spec = {**label_spec, "lora_targets": ["query", "value"]}  # where adapters go: the same features
    data = _text_data()
    data = SplitData(data.train_payloads, data.train_labels, data.val_payloads, data.val_labels,
                     [f"t{i}" for i in range(len(data.train_payloads))],
                     [f"v{i}" for i in range(len(data.val_payloads))])
    store = store_path(tmp_path, "spam", text, label_spec)
    assert store == store_path(tmp_path, "spam", text, train_spec)
    # the label stage encoded the train rows (ids are content hashes; a different text here proves the store is read)
    stored = cached_extract(text, label_spec, data.train_ids, ["stored row"] * len(data.train_ids), batch_size=8,
                            cache_path=store)
    strategy = ProbeStrategy(text, train_spec, data, metric="accuracy", patience=3, device=torch.device("cpu"),
                             feature_batch_size=8, feature_store=store)
    np.testing.assert_array_equal(strategy.x_train.numpy(), stored)
    with np.load(store) as z:  # the val rows were encoded and added; label's rows stay
        assert sorted(z["ids"].tolist()) == sorted(data.train_ids + data.val_ids)
    assert not np.allclose(strategy.x_val.numpy()[0], stored[0])


def test_hybrid_strategy_learns_lexical_cues_and_round_trips_as_one_saved_model(tmp_path):
    from stages.model import load_classifier, predict_proba, save_classifier
    from stages.training.frozen import HybridStrategy

    text = get_modality("text")
    spec = {"backbone": "minilm_l6", "max_length": 16, "pooling": "mean",
            "tfidf": {"ngram_max": 2, "min_df": 1, "max_features": 50, "sublinear_tf": True, "encoder_weight": 0.5}}
    data = _text_data()
    strategy = HybridStrategy(text, spec, data, metric="accuracy", patience=3, device=torch.device("cpu"),
                              feature_batch_size=8)
    assert strategy.x_train.shape[1] == 384 + len(strategy.backbone.tfidf.vocab)
    result = strategy.fit({"l2": 1e-4, "max_iter": 100, "head_hidden": 0, "dropout": 0.0}, lambda e, m: None, seed=0)
    assert result.best_metric == 1.0
    config = {"task": "t", "modality": "text", "labels": ["ham", "spam"], "spec": strategy.spec, "strategy": "hybrid",
              "feature_dim": int(result.model.backbone.feature_dim), "head": {"hidden": 0, "dropout": 0.0}}
    save_classifier(tmp_path, result.model, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone", "classifier.json", "model.safetensors"]
    loaded, loaded_config, _ = load_classifier(tmp_path)
    texts = ["claim your free prize now", "see you at dinner"]
    kwargs = {"batch_size": 4, "device": torch.device("cpu")}
    before = predict_proba(result.model, text, strategy.spec, texts, **kwargs)
    np.testing.assert_allclose(predict_proba(loaded, text, loaded_config["spec"], texts, **kwargs), before, atol=1e-5)
    assert before.argmax(1).tolist() == [1, 0]


def test_hybrid_strategy_is_text_only():
    from stages.training.frozen import HybridStrategy

    images = [png_bytes(value=v) for v in (20, 60, 100, 140)]
    data = SplitData(images, np.array([0, 0, 1, 1]), images, np.array([0, 0, 1, 1]))
    with pytest.raises(StageError, match="'hybrid' is not available for modality 'image'"):
        HybridStrategy(get_modality("image"), {"backbone": "efficientnet_lite0", "image_size": 32}, data,
                       metric="accuracy", patience=1, device=torch.device("cpu"), feature_batch_size=4)


def test_full_strategy_smoke_on_images():
    images = [png_bytes(value=v) for v in (20, 60, 100, 140, 180, 220)]
    data = SplitData(images, np.array([0, 0, 0, 1, 1, 1]), images[:2] + images[-2:], np.array([0, 0, 1, 1]))
    strategy = FullStrategy(get_modality("image"), {"backbone": "efficientnet_lite0", "image_size": 32}, data,
                            metric="accuracy", patience=1, device=torch.device("cpu"), feature_batch_size=4)
    epochs = []
    result = strategy.fit({**HEAD_HP, "lr": 1e-4, "batch_size": 3, "max_epochs": 1}, lambda e, m: epochs.append(m),
                          seed=0)
    assert result.epochs_run == 1 and len(epochs) == 1
    assert not math.isnan(epochs[0]["train_loss"])
    assert any(p.requires_grad for p in result.model.backbone.parameters())


class _Choices:
    search = {"head": {"head_hidden": {"type": "fixed", "value": 256}, "lr": {"type": "float", "low": 0.1, "high": 1}},
              "scratch": {"lr": {"type": "float", "low": 0.1, "high": 1}}}
    model = {"image": {"backbone": "efficientnet_lite0", "image_size": 32}}
    scratch_model = {"image": {"backbone": "cnn_small", "image_size": 8, "channels": 1, "width": 4}}

    def __init__(self, strategy):
        self.strategy = strategy


@pytest.mark.parametrize("value, expected", [
    ("head", ["head"]),
    (["scratch", "head"], ["scratch", "head"]),
    ({"image": ["head", "scratch"], "text": "head"}, ["head", "scratch"]),
])
def test_strategy_choices_take_a_name_a_list_or_one_per_modality(value, expected):
    assert strategy_choices(_Choices(value), "image") == expected


@pytest.mark.parametrize("value, message", [
    ({"text": ["head"]}, r"train.strategy.image: missing key"),
    (["head", "warp"], r"unknown strategy 'warp'; known: \['adapter', 'full', 'head', 'hybrid', 'lora', 'peft',"
     r" 'probe', 'scratch'\]"),
    (["lora"], r"train.search.lora: missing key"),
])
def test_strategy_choices_fail_with_the_key(value, message):
    with pytest.raises(StageError, match=message):
        strategy_choices(_Choices(value), "image")


def test_scratch_takes_its_own_model_spec():
    image = get_modality("image")
    assert strategy_spec(_Choices("head"), "scratch", image)["backbone"] == "cnn_small"
    assert strategy_spec(_Choices("head"), "head", image)["backbone"] == "efficientnet_lite0"
    with pytest.raises(StageError, match="train.scratch_model.text: missing key"):
        strategy_spec(_Choices("head"), "scratch", get_modality("text"))


def test_study_chooses_strategies_and_keeps_a_leaderboard(tmp_path):
    study = journal_study(tmp_path)
    for name in ("head", "scratch"):
        study.enqueue_trial({"strategy": name})
    values = {"head": [0.7, 0.8], "scratch": [0.9, 0.6]}
    seen = []

    def objective(trial):
        name = choose_strategy(trial, ["head", "scratch"])
        seen.append(name)
        return values[name].pop(0) if values[name] else 0.5

    study.optimize(objective, n_trials=4)
    assert seen[:2] == ["head", "scratch"]  # one of each first, in the listed order
    board = leaderboard(study.get_trials(), "head")
    assert set(board) == set(seen)
    assert board["scratch"]["best_value"] == 0.9 and board["scratch"]["best_trial"] == 1
    assert board["head"]["best_value"] == max(v for t, v in zip(seen, [t.value for t in study.trials]) if t == "head")
    lines = history_csv(study.get_trials(), "head").splitlines()
    assert lines[0] == "trial,strategy,value,best_value" and len(lines) == 5
    assert [float(line.split(",")[3]) for line in lines[1:]] == [0.7, 0.9, 0.9, 0.9]


def test_best_hyperparameters_include_fixed_values(tmp_path):
    """A `fixed` search entry never enters trial.params; the final model must still get it (head_hidden here)."""
    study = journal_study(tmp_path)
    study.optimize(lambda t: suggest(t, _Choices.search["head"])["lr"], n_trials=1)
    name, hp = best_hyperparameters(study.best_trial, _Choices("head"), ["head"])
    assert name == "head" and hp["head_hidden"] == 256 and "lr" in hp and "head_hidden" not in study.best_trial.params


def test_scratch_strategy_trains_a_random_init_cnn_at_native_size():
    images = [png_bytes((8, 8), value=v) for v in (20, 60, 100, 140, 180, 220)]
    data = SplitData(images, np.array([0, 0, 0, 1, 1, 1]), images[:2] + images[-2:], np.array([0, 0, 1, 1]))
    spec = _Choices.scratch_model["image"]
    strategy = ScratchStrategy(get_modality("image"), spec, data, metric="accuracy", patience=5,
                               device=torch.device("cpu"), feature_batch_size=4)
    result = strategy.fit({**HEAD_HP, "lr": 1e-2, "batch_size": 3, "max_epochs": 3}, lambda e, m: None, seed=0)
    assert result.epochs_run >= 1 and result.model.backbone.feature_dim == 16
    assert strategy.modality.to_batch(images[:2], spec, result.model.backbone).shape == (2, 1, 8, 8)


def test_strategies_with_clashing_ranges_share_one_study(tmp_path):
    """`batch_size` with other choices in each strategy: Optuna refuses one name with two ranges, so each
    strategy's parameters are prefixed; the best trial's hyperparameters come back under their plain names."""
    from stages.training.study import param_prefix

    spaces = {"head": {"batch_size": {"type": "categorical", "choices": [64, 256]},
                       "head_hidden": {"type": "fixed", "value": 0}},
              "scratch": {"batch_size": {"type": "categorical", "choices": [8, 16]}}}
    study = journal_study(tmp_path)
    choices = ["head", "scratch"]
    for name in choices:
        study.enqueue_trial({"strategy": name})

    def objective(trial):
        name = choose_strategy(trial, choices)
        hp = suggest(trial, spaces[name], prefix=param_prefix(name, choices))
        return 1.0 if name == "scratch" else 0.5 + hp["batch_size"] / 1000

    study.optimize(objective, n_trials=4)
    assert {t.params["strategy"] for t in study.trials} == {"head", "scratch"}

    class Tp:
        search = spaces

    name, hp = best_hyperparameters(study.best_trial, Tp, choices)
    assert name == "scratch" and set(hp) == {"batch_size"} and hp["batch_size"] in (8, 16)
    head_trial = next(t for t in study.trials if t.params["strategy"] == "head")
    assert best_hyperparameters(head_trial, Tp, choices)[1] == {"head_hidden": 0,
                                                                 "batch_size": head_trial.params["head.batch_size"]}


def test_probe_strategy_converges_to_a_linear_classifier_on_frozen_features():
    spec = {"backbone": "minilm_l6", "max_length": 16, "pooling": "mean"}
    strategy = ProbeStrategy(get_modality("text"), spec, _text_data(), metric="accuracy", patience=3,
                             device=torch.device("cpu"), feature_batch_size=8)
    epochs = []
    result = strategy.fit({"l2": 1e-4, "max_iter": 200, "head_hidden": 0, "dropout": 0.0},
                          lambda e, m: epochs.append((e, m)), seed=0)
    assert result.best_metric == 1.0 and result.epochs_run == 1 and [e for e, _ in epochs] == [0]
    assert not any(p.requires_grad for p in result.model.backbone.parameters())
    # strong L2 shrinks the weights: the penalty is applied
    strong = strategy.fit({"l2": 10.0, "max_iter": 200, "head_hidden": 0, "dropout": 0.0}, lambda e, m: None, seed=0)
    assert strong.model.head[-1].weight.norm() < result.model.head[-1].weight.norm()
    restored = strategy.restore(strategy.checkpoint(result.model), {"head_hidden": 0, "dropout": 0.0})
    assert torch.equal(restored.head[-1].weight, result.model.head[-1].weight)


class _Defaults:
    search = {"head": {"lr": {"type": "float", "low": 0.1, "high": 1, "default": 0.5},
                       "batch_size": {"type": "categorical", "choices": [8, 16], "default": 16},
                       "head_hidden": {"type": "fixed", "value": 0}},
              "scratch": {"lr": {"type": "float", "low": 0.1, "high": 1}}}


def test_first_trials_pin_each_strategy_and_its_defaults_then_the_sampler_takes_over(tmp_path):
    assert first_trials(_Defaults, ["head", "scratch"]) == [
        {"strategy": "head", "head.lr": 0.5, "head.batch_size": 16}, {"strategy": "scratch"}]
    assert first_trials(_Defaults, ["head"]) == [{"lr": 0.5, "batch_size": 16}]
    assert first_trials(_Defaults, ["scratch"]) == []  # nothing to pin: the sampler starts
    study = journal_study(tmp_path)
    for trial in first_trials(_Defaults, ["head"]):
        study.enqueue_trial(trial)
    seen = []
    study.optimize(lambda t: seen.append(suggest(t, _Defaults.search["head"])) or 0.0, n_trials=3)
    assert seen[0] == {"lr": 0.5, "batch_size": 16, "head_hidden": 0}
    assert len({s["lr"] for s in seen}) == 3  # later trials sample


@pytest.mark.parametrize("entry, message", [
    ({"type": "float", "low": 0.1, "high": 1, "default": 2.0}, r"head.lr.default: 2.0 is outside \[0.1, 1\]"),
    ({"type": "categorical", "choices": [8], "default": 9}, r"head.lr.default: 9 is not one of \[8\]"),
    ({"type": "fixed", "value": 1, "default": 1}, r"head.lr.default: a fixed entry has no default"),
])
def test_a_bad_default_fails_with_its_key(entry, message):
    class Bad:
        search = {"head": {"lr": entry}}

    with pytest.raises(StageError, match=message):
        first_trials(Bad, ["head"])


def test_cnn_small_flip_averages_features_in_eval_mode_only():
    image = get_modality("image")
    spec = {"backbone": "cnn_small", "image_size": 8, "channels": 1, "width": 4}
    torch.manual_seed(0)
    plain = image.build_backbone(spec, pretrained=False)
    torch.manual_seed(0)
    tta = image.build_backbone({**spec, "tta_hflip": True}, pretrained=False)
    x = torch.randn(3, 1, 8, 8)
    plain.eval(), tta.eval()
    with torch.no_grad():
        assert torch.allclose(tta(x), 0.5 * (plain(x) + plain(x.flip(-1))), atol=1e-6)
        assert torch.allclose(tta(x), tta(x.flip(-1)), atol=1e-6)  # a mirror image gets the same prediction
        assert not torch.allclose(plain(x), plain(x.flip(-1)), atol=1e-4)
        tta.train(), plain.train()
        assert torch.allclose(tta(x), plain(x), atol=1e-6)  # training sees each image as it is


def test_fit_epochs_applies_label_smoothing():
    """On separable data the unsmoothed loss drives the correct class's probability towards 1; with smoothing
    0.2 over two classes its optimum is 0.9."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 4)
    y = torch.tensor([0, 1] * 4)

    def confidence(smoothing: float) -> float:
        torch.manual_seed(0)
        module = torch.nn.Linear(2, 2)
        rising = iter(range(1000))  # every epoch "improves", so the last epoch's weights are kept
        fit_epochs(module, batches=lambda e: [(x, y)], evaluate=lambda: float(next(rising)), lr=0.1,
                   weight_decay=0.0, max_epochs=300, patience=5, device=torch.device("cpu"),
                   on_epoch=lambda e, m: None, label_smoothing=smoothing)
        with torch.no_grad():
            return float(module(x).softmax(1).max(1).values.min())

    assert confidence(0.0) > 0.97
    assert 0.85 < confidence(0.2) < 0.93
