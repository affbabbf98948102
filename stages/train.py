"""train: an Optuna study that fine-tunes a pretrained backbone, tracked in MLflow.

Reads the augmented table (train and val rows). Each trial samples hyperparameters from the
search space in `params.train.search.<strategy>`, trains epoch by epoch, reports the validation
metric for pruning, stops early after `patience` epochs without improvement and keeps its best
epoch's weights. The best trial's model is written to the model folder; the study's journal,
a training summary (MLflow run id, best params) and metrics are written beside it.

Strategies (`params.train.strategy`): `head` freezes the backbone and trains a head on cached
features (fast on CPU); `full` fine-tunes the whole network (meant for GPUs).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from torch import nn

from stages.common import StageError, atomic_path, build, file_md5, load_params, read_parquet, run_main, task_params, write_json
from stages.model import (
    Classifier,
    autocast,
    batched_forward,
    choose_device,
    configure_threads,
    make_head,
    save_classifier,
)
from stages.modalities import Modality, task_modality


@dataclass(frozen=True)
class PrunerParams:
    kind: str
    n_startup_trials: int
    n_warmup_steps: int


@dataclass(frozen=True)
class TrainParams:
    strategy: str
    n_trials: int
    timeout_s: float | None
    metric: str
    patience: int
    pruner: PrunerParams
    num_threads: int | None
    feature_batch_size: int
    search: dict[str, dict[str, dict[str, Any]]]
    model: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class SplitData:
    train_payloads: list[Any]
    train_labels: np.ndarray
    val_payloads: list[Any]
    val_labels: np.ndarray


@dataclass
class FitResult:
    model: Classifier
    best_metric: float
    best_epoch: int
    epochs_run: int


EpochCallback = Callable[[int, dict[str, float]], None]


# ---------------------------------------------------------------- metrics and search space

def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score, f1_score

    if metric == "macro_f1":
        return float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    raise StageError(f"params.yaml: train.metric: unknown metric {metric!r}; known: ['accuracy', 'macro_f1']")


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample one value per entry of a params.yaml search space.

    Each entry is `{type: float|int, low, high, log}` or `{type: categorical, choices}`.
    """
    values = {}
    for name, spec in space.items():
        kind = spec.get("type")
        if kind == "float":
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif kind == "int":
            values[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        elif kind == "categorical":
            values[name] = trial.suggest_categorical(name, list(spec["choices"]))
        else:
            raise StageError(f"params.yaml: train.search.*.{name}.type: unknown type {kind!r}; "
                             "known: ['categorical', 'float', 'int']")
    return values


# ---------------------------------------------------------------- the training loop

def fit_epochs(module: nn.Module, *, batches: Callable[[int], Any], evaluate: Callable[[], float],
               lr: float, weight_decay: float, max_epochs: int, patience: int, device: torch.device,
               on_epoch: EpochCallback) -> tuple[float, int, int]:
    """Train `module` epoch by epoch with early stopping; restore the best epoch's weights.

    Returns `(best_metric, best_epoch, epochs_run)`. `on_epoch` may raise (e.g. TrialPruned).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    best_metric, best_epoch, best_state, stale = -math.inf, -1, None, 0
    epoch = -1
    for epoch in range(max_epochs):
        module.train()
        total, count = 0.0, 0
        for inputs, targets in batches(epoch):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss = loss_fn(module(inputs).float(), targets)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(targets)
            count += len(targets)
        metric = evaluate()
        improved = metric > best_metric
        if improved:
            best_metric, best_epoch, stale = metric, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
        else:
            stale += 1
        on_epoch(epoch, {"val_metric": metric, "train_loss": total / max(count, 1)})
        if stale >= patience:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    return best_metric, best_epoch, epoch + 1


class HeadStrategy:
    """Frozen backbone: extract features once, then each trial trains only a head on them."""

    def __init__(self, modality: Modality, spec: dict[str, Any], data: SplitData, *, metric: str,
                 patience: int, device: torch.device, feature_batch_size: int) -> None:
        self.modality, self.spec, self.metric, self.patience, self.device = modality, spec, metric, patience, device
        self.backbone = modality.build_backbone(spec, pretrained=True).to(device).eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        extract = lambda payloads, desc: torch.from_numpy(batched_forward(  # noqa: E731
            self.backbone, modality, spec, payloads, self.backbone,
            batch_size=feature_batch_size, device=device, desc=desc))
        self.x_train = extract(data.train_payloads, "features train").to(device)
        self.x_val = extract(data.val_payloads, "features val").to(device)
        self.y_train = torch.from_numpy(data.train_labels).long().to(device)
        self.y_val = data.val_labels
        self.n_classes = int(max(data.train_labels.max(), data.val_labels.max())) + 1

    def fit(self, hp: dict[str, Any], on_epoch: EpochCallback, *, seed: int) -> FitResult:
        torch.manual_seed(seed)
        head = make_head(self.x_train.shape[1], self.n_classes, hidden=hp["head_hidden"], dropout=hp["dropout"])
        head.to(self.device)
        generator = torch.Generator().manual_seed(seed)

        def batches(epoch: int):
            order = torch.randperm(len(self.y_train), generator=generator).to(self.device)
            for start in range(0, len(order), hp["batch_size"]):
                idx = order[start:start + hp["batch_size"]]
                yield self.x_train[idx], self.y_train[idx]

        def evaluate() -> float:
            head.eval()
            with torch.inference_mode(), autocast(self.device):
                pred = head(self.x_val).float().argmax(1).cpu().numpy()
            return score(self.metric, self.y_val, pred)

        best, best_epoch, epochs = fit_epochs(head, batches=batches, evaluate=evaluate, lr=hp["lr"],
                                              weight_decay=hp["weight_decay"], max_epochs=hp["max_epochs"],
                                              patience=self.patience, device=self.device, on_epoch=on_epoch)
        return FitResult(Classifier(self.backbone, head), best, best_epoch, epochs)


class FullStrategy:
    """Fine-tune the whole pretrained network; each trial starts from the pretrained weights."""

    def __init__(self, modality: Modality, spec: dict[str, Any], data: SplitData, *, metric: str,
                 patience: int, device: torch.device, feature_batch_size: int) -> None:
        self.modality, self.spec, self.data, self.metric = modality, spec, data, metric
        self.patience, self.device, self.eval_batch = patience, device, feature_batch_size
        self.n_classes = int(max(data.train_labels.max(), data.val_labels.max())) + 1

    def fit(self, hp: dict[str, Any], on_epoch: EpochCallback, *, seed: int) -> FitResult:
        torch.manual_seed(seed)
        backbone = self.modality.build_backbone(self.spec, pretrained=True)
        head = make_head(backbone.feature_dim, self.n_classes, hidden=hp["head_hidden"], dropout=hp["dropout"])
        model = Classifier(backbone, head).to(self.device)
        generator = torch.Generator().manual_seed(seed)
        payloads, labels = self.data.train_payloads, torch.from_numpy(self.data.train_labels).long()

        def batches(epoch: int):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), hp["batch_size"]):
                idx = order[start:start + hp["batch_size"]].tolist()
                batch = self.modality.to_batch([payloads[i] for i in idx], self.spec, backbone)
                from stages.model import to_device

                yield to_device(batch, self.device), labels[idx].to(self.device)

        def evaluate() -> float:
            model.eval()
            logits = batched_forward(model, self.modality, self.spec, self.data.val_payloads, backbone,
                                     batch_size=self.eval_batch, device=self.device)
            return score(self.metric, self.data.val_labels, logits.argmax(1))

        best, best_epoch, epochs = fit_epochs(model, batches=batches, evaluate=evaluate, lr=hp["lr"],
                                              weight_decay=hp["weight_decay"], max_epochs=hp["max_epochs"],
                                              patience=self.patience, device=self.device, on_epoch=on_epoch)
        return FitResult(model, best, best_epoch, epochs)


STRATEGIES: dict[str, type] = {"head": HeadStrategy, "full": FullStrategy}


def get_strategy(name: str) -> type:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise StageError(f"params.yaml: train.strategy: unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None


# ---------------------------------------------------------------- study

def make_pruner(params: PrunerParams) -> optuna.pruners.BasePruner:
    if params.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=params.n_startup_trials, n_warmup_steps=params.n_warmup_steps)
    if params.kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if params.kind == "none":
        return optuna.pruners.NopPruner()
    raise StageError(f"params.yaml: train.pruner.kind: unknown pruner {params.kind!r}; known: ['hyperband', 'median', 'none']")


def run_trial(trial: optuna.Trial, strategy: Any, space: dict[str, dict[str, Any]], *, seed: int,
              on_epoch: EpochCallback) -> FitResult:
    """One Optuna trial: sample, fit with per-epoch reporting and pruning, record the best epoch."""
    hp = suggest(trial, space)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        on_epoch(epoch, metrics)
        trial.report(metrics["val_metric"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    result = strategy.fit(hp, report, seed=seed + trial.number)
    trial.set_user_attr("best_epoch", result.best_epoch)
    trial.set_user_attr("epochs_run", result.epochs_run)
    return result


def split_data(frame: pd.DataFrame, modality: Modality, labels: Sequence[str]) -> SplitData:
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = sorted(set(frame["label"]) - set(index))
    if unknown:
        raise StageError(f"input: field 'label': value {unknown[0]!r} is not in the task's label set {list(labels)}")
    train = frame[frame["split"] == "train"].sort_values("id", kind="stable")
    val = frame[frame["split"] == "val"].sort_values("id", kind="stable")
    if train.empty or val.empty:
        raise StageError("input: field 'split': need both train and val rows")
    column = modality.payload_column
    return SplitData(list(train[column]), train["label"].map(index).to_numpy(dtype=np.int64, copy=True),
                     list(val[column]), val["label"].map(index).to_numpy(dtype=np.int64, copy=True))


def study_name(task: str, data_md5: str, tp: TrainParams) -> str:
    """Deterministic: same data and search space give the same study name."""
    space = json.dumps({"strategy": tp.strategy, "search": tp.search.get(tp.strategy), "metric": tp.metric}, sort_keys=True)
    return f"{task}-{data_md5[:8]}-{hashlib.sha256(space.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--study", required=True, help="Optuna journal file")
    parser.add_argument("--summary", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    from stages import tracking

    started = time.time()
    params = load_params()
    tp = build(TrainParams, params.get("train"), "train")
    seed = params["base"]["seed"]
    task = task_params(params, args.task)
    labels = list(task["labels"])
    modality = task_modality(params, args.task)
    strategy_cls = get_strategy(tp.strategy)
    if tp.strategy not in tp.search:
        raise StageError(f"params.yaml: train.search.{tp.strategy}: missing key")
    if modality.name not in tp.model:
        raise StageError(f"params.yaml: train.model.{modality.name}: missing key")
    spec = dict(tp.model[modality.name])
    space = tp.search[tp.strategy]
    configure_threads(tp.num_threads)
    torch.manual_seed(seed)
    device = choose_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    frame = read_parquet(args.inp)
    data_md5 = file_md5(args.inp)
    data = split_data(frame, modality, labels)
    name = study_name(args.task, data_md5, tp)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    run_ctx = tracking.start(params, args.task, run_name=f"study-{name}")
    with run_ctx as parent:
        tracking.log_lineage(args.task, args.inp, data_md5)
        import mlflow

        mlflow.log_params({"strategy": tp.strategy, "n_trials": tp.n_trials, "metric": tp.metric,
                           "patience": tp.patience, "pruner": tp.pruner.kind, "device": device.type,
                           "study_name": name, **{f"model.{k}": v for k, v in spec.items()}})
        mlflow.log_dict({"search": space}, "search_space.json")
        strategy = strategy_cls(modality, spec, data, metric=tp.metric, patience=tp.patience,
                                device=device, feature_batch_size=tp.feature_batch_size)
        with atomic_path(args.study) as journal_tmp:
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal_tmp)))
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                        sampler=optuna.samplers.TPESampler(seed=seed), pruner=make_pruner(tp.pruner),
                                        load_if_exists=True)
            best: dict[str, Any] = {}

            def objective(trial: optuna.Trial) -> float:
                result = tracking.tracked_trial(trial, lambda on_epoch: run_trial(
                    trial, strategy, space, seed=seed, on_epoch=on_epoch), metric=tp.metric)
                if result.best_metric > best.get("value", -math.inf):
                    best.update(value=result.best_metric, model=copy.deepcopy(result.model).cpu(), number=trial.number)
                return result.best_metric

            study.optimize(objective, n_trials=tp.n_trials, timeout=tp.timeout_s, show_progress_bar=False)
            trials = study.trials
        states = [t.state.name for t in trials]
        if "model" not in best:
            raise StageError(f"study {name}: no trial completed ({states.count('PRUNED')} pruned, "
                             f"{states.count('FAIL')} failed)")
        summary_metrics = {
            f"best_val_{tp.metric}": best["value"],
            "n_trials": len(trials),
            "n_complete": states.count("COMPLETE"),
            "n_pruned": states.count("PRUNED"),
            "n_failed": states.count("FAIL"),
            "best_trial": best["number"],
            "best_epoch": trials[best["number"]].user_attrs.get("best_epoch"),
            "trial_epochs": int(sum(t.user_attrs.get("epochs_run", len(t.intermediate_values)) for t in trials)),
        }
        mlflow.log_metrics({k: float(v) for k, v in summary_metrics.items() if v is not None})
        mlflow.log_params({f"best.{k}": v for k, v in trials[best["number"]].params.items()})
        config = {
            "task": args.task,
            "modality": modality.name,
            "labels": labels,
            "spec": spec,
            "strategy": tp.strategy,
            "feature_dim": int(best["model"].backbone.feature_dim),
            "head": {"hidden": int(trials[best["number"]].params["head_hidden"]),
                     "dropout": float(trials[best["number"]].params["dropout"])},
        }
        with atomic_path(args.model_dir) as tmp_dir:
            save_classifier(tmp_dir, best["model"], config)
        write_json(args.summary, {
            "run_id": parent.info.run_id,
            "experiment_id": parent.info.experiment_id,
            "study_name": name,
            "best_params": trials[best["number"]].params,
            "train_data_md5": data_md5,
            **summary_metrics,
        })
    summary_metrics["wall_s"] = round(time.time() - started, 1)
    write_json(args.metrics, summary_metrics)
    print(f"train {args.task}: {summary_metrics}")


if __name__ == "__main__":
    run_main(main)
