"""train: a resumable Optuna study that fine-tunes a pretrained backbone, tracked in MLflow.

Reads the augmented table (train and val rows). Each trial samples hyperparameters from
`params.train.search.<strategy>`, trains epoch by epoch, reports the validation metric for pruning,
stops early after `patience` epochs without improvement and keeps its best epoch's weights.

The study lives in the study folder (a DVC output with `persist: true`): an Optuna journal (or the
RDB URL in `train.storage`), cached backbone features and per-trial checkpoints. Its name is derived
from the data hash and the search settings, so rerunning on the same data resumes the study
(finished trials are kept; trials left RUNNING by a dead worker are failed and retried), while a new
data version starts a fresh one. `train.n_workers` processes share one study; more can join from
other machines with `--worker-only` against the same storage URL.

Strategies (`params.train.strategy`): `head` freezes the backbone and trains a head on cached
features (fast on CPU); `lora` adds low-rank adapters to a text encoder (peft); `full` fine-tunes the
whole network (meant for GPUs); `scratch` trains the modality's small from-scratch backbone
(`params.train.scratch_model`) at the data's native resolution. `train.strategy` is one name, a list,
or a list per modality: with several, each trial picks one (the categorical parameter `strategy`),
one trial of each is queued first in the listed order (cheap first), and pruning and the sampler do
the rest. `metrics/<task>/train.json` and the study's MLflow run carry a leaderboard (the best value
per strategy), and `--history` writes the optimisation history for `dvc plots`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
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

from stages.calibration import calibrate
from stages.common import (
    StageError,
    atomic_path,
    build,
    file_md5,
    load_params,
    read_parquet,
    run_main,
    task_params,
    write_json,
)
from stages.dropout import fast_dropout
from stages.labeling.features import cached_extract, store_path
from stages.modalities import Modality, check_backbone, task_modality
from stages.model import (
    Classifier,
    autocast,
    batched_forward,
    choose_device,
    configure_threads,
    make_head,
    save_classifier,
    to_device,
)
from stages.workers import is_dead_local_worker, worker_id

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass(frozen=True)
class PrunerParams:
    kind: str
    n_startup_trials: int
    n_warmup_steps: int


@dataclass(frozen=True)
class TrainParams:
    strategy: str | list[str] | dict[str, str | list[str]]
    n_trials: int
    timeout_s: float | None
    n_workers: int
    storage: str | None
    final_model: str
    metric: str
    patience: int
    pruner: PrunerParams
    num_threads: int | None
    deterministic: bool
    feature_batch_size: int
    search: dict[str, dict[str, dict[str, Any]]]
    model: dict[str, dict[str, Any]]
    scratch_model: dict[str, dict[str, Any]]
    tfidf: dict[str, Any] | None = None  # strategy hybrid: the TF-IDF half of its features


@dataclass(frozen=True)
class SplitData:
    train_payloads: list[Any]
    train_labels: np.ndarray
    val_payloads: list[Any]
    val_labels: np.ndarray
    train_ids: list[str] | None = None  # content-hash row ids: the shared feature store's keys
    val_ids: list[str] | None = None


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


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]], *, prefix: str = "") -> dict[str, Any]:
    """Sample one value per entry of a params.yaml search space.

    Each entry is `{type: float|int, low, high, log}`, `{type: categorical, choices}` or `{type: fixed, value}`;
    a sampled entry may name a `default`, the value the study's first trial of the strategy uses
    (`first_trials`).
    Optuna parameters are named `prefix + name` (a study choosing among strategies prefixes `<strategy>.`: one
    name with two ranges in one study is an error in Optuna); the returned keys are the plain names.
    """
    values = {}
    for name, spec in space.items():
        kind, key = spec.get("type"), prefix + name
        if kind == "float":
            values[name] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif kind == "int":
            values[name] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        elif kind == "categorical":
            values[name] = trial.suggest_categorical(key, list(spec["choices"]))
        elif kind == "fixed":
            values[name] = spec["value"]
        else:
            raise StageError(f"params.yaml: train.search.*.{name}.type: unknown type {kind!r}; "
                             "known: ['categorical', 'fixed', 'float', 'int']")
    return values


def first_trials(tp: TrainParams, choices: Sequence[str]) -> list[dict[str, Any]]:
    """The trials a fresh study runs first: one per strategy, in the listed order (cheap first), with the
    `default` values its search space names (a known good start); the sampler takes over after them.

    Empty when there is nothing to pin (one strategy, no defaults). A default outside its range fails here.
    """
    trials = []
    for choice in choices:
        prefix = param_prefix(choice, choices)
        trial: dict[str, Any] = {"strategy": choice} if len(choices) > 1 else {}
        for name, spec in tp.search[choice].items():
            if "default" not in spec:
                continue
            value, where = spec["default"], f"params.yaml: train.search.{choice}.{name}.default"
            kind = spec.get("type")
            if kind == "categorical" and value not in spec["choices"]:
                raise StageError(f"{where}: {value!r} is not one of {list(spec['choices'])}")
            if kind in ("float", "int") and not float(spec["low"]) <= float(value) <= float(spec["high"]):
                raise StageError(f"{where}: {value!r} is outside [{spec['low']}, {spec['high']}]")
            if kind == "fixed":
                raise StageError(f"{where}: a fixed entry has no default (its value is the only one)")
            trial[prefix + name] = value
        if trial:
            trials.append(trial)
    return trials


# ---------------------------------------------------------------- the training loop

WARMUP = 0.2  # warmup_cosine: the fraction of the schedule spent ramping the learning rate up from 0


def _warmup_cosine(progress: float) -> float:
    if progress < WARMUP:
        return progress / WARMUP
    return 0.5 * (1.0 + math.cos(math.pi * (progress - WARMUP) / (1.0 - WARMUP)))


# learning-rate multiplier as a function of training progress in [0, 1]
LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    # linear warmup, then cosine decay to 0 (the one-cycle shape): a network trained from random weights with
    # BatchNorm and AdamW at a high rate is unstable in its first steps without it
    "warmup_cosine": _warmup_cosine,
}


# schedules that torch implements itself, stepped once per optimiser step: `one_cycle` is torch's OneCycleLR
# (warmup over the first WARMUP of the steps from lr/25 to lr, cosine annealing to lr/25e4, and AdamW's beta1
# cycled 0.95 -> 0.85 -> 0.95 against the rate). On animals it is what the from-scratch CNN was tuned with
# (test macro-F1 0.9851/0.9856/0.9867 over 3 seeds); the linear warmup_cosine without the beta1 cycle gave
# 0.9822/0.9817 in the pipeline
TORCH_SCHEDULES = ("one_cycle",)


def lr_factor(schedule: str, epoch: float, max_epochs: int) -> float:
    """The learning-rate multiplier at `epoch` (fractional within an epoch when the schedule runs per step) of a
    schedule spanning `max_epochs`: 1, a cosine decay from 1 towards 0, or a warmup then that decay."""
    if schedule not in LR_SCHEDULES:
        raise StageError(f"params.yaml: train.search.*.lr_schedule: unknown schedule {schedule!r}; "
                         f"known: {[*LR_SCHEDULES, *TORCH_SCHEDULES]}")
    return LR_SCHEDULES[schedule](min(epoch, max_epochs) / max(max_epochs, 1))


def torch_scheduler(schedule: str, optimizer: torch.optim.Optimizer, *, lr: float, total_steps: int) -> Any:
    """The torch scheduler of a TORCH_SCHEDULES entry over `total_steps` optimiser steps."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 2),
                                               pct_start=WARMUP)


def fit_epochs(module: nn.Module, *, batches: Callable[[int], Any], evaluate: Callable[[], float],
               lr: float, weight_decay: float, max_epochs: int, patience: int, device: torch.device,
               on_epoch: EpochCallback, lr_schedule: str = "constant",
               schedule_epochs: int | None = None, label_smoothing: float = 0.0,
               steps_per_epoch: int | None = None) -> tuple[float, int, int]:
    """Train `module` epoch by epoch with early stopping; restore the best epoch's weights.

    `lr_schedule` `cosine` decays the learning rate per epoch over `schedule_epochs` (default `max_epochs`), so a
    trial settles by the end of its own budget instead of drifting at a constant rate (which leaves early
    stopping and the pruner comparing noise). Given `steps_per_epoch` (the batches `batches` yields per epoch),
    the rate is set at every step instead, from the fraction of the schedule done. `label_smoothing` is the
    cross-entropy's. Returns `(best_metric, best_epoch, epochs_run)`. `on_epoch` may raise (e.g. TrialPruned).
    """
    horizon = schedule_epochs or max_epochs
    if lr_schedule not in TORCH_SCHEDULES:
        lr_factor(lr_schedule, 0, horizon)  # an unknown schedule fails before any training
    params = [p for p in module.parameters() if p.requires_grad]
    # the fused kernel: one pass over all parameters instead of torch's per-tensor loop, which is the CPU
    # default and costs ~7x more per step for MiniLM (benchmarks/throughput.py)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
    # a torch scheduler steps per optimiser step, or per epoch without steps_per_epoch
    scheduler = (torch_scheduler(lr_schedule, optimizer, lr=lr, total_steps=horizon * (steps_per_epoch or 1))
                 if lr_schedule in TORCH_SCHEDULES else None)

    def advance() -> None:  # one scheduler step, never past its last (a run may outlast a shorter horizon)
        if scheduler is not None and scheduler.last_epoch < scheduler.total_steps - 1:
            scheduler.step()

    best_metric, best_epoch, best_state, stale = -math.inf, -1, None, 0
    epoch = -1
    with fast_dropout(module, device):
        for epoch in range(max_epochs):
            module.train()
            total, count = 0.0, 0
            if scheduler is None:
                for group in optimizer.param_groups:
                    group["lr"] = lr * lr_factor(lr_schedule, epoch, horizon)
            for step, (inputs, targets) in enumerate(batches(epoch)):
                if steps_per_epoch and scheduler is None:
                    factor = lr_factor(lr_schedule, epoch + min(step / steps_per_epoch, 1.0), horizon)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * factor
                optimizer.zero_grad(set_to_none=True)
                with autocast(device):
                    loss = loss_fn(module(inputs).float(), targets)
                loss.backward()
                optimizer.step()
                if steps_per_epoch:
                    advance()
                total += float(loss.detach()) * len(targets)
                count += len(targets)
            if not steps_per_epoch:
                advance()
            metric = evaluate()
            if metric > best_metric:
                best_metric, best_epoch, stale = metric, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
            on_epoch(epoch, {"val_metric": metric, "train_loss": total / max(count, 1)})
            if stale >= patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    return best_metric, best_epoch, epoch + 1


def loop_args(hp: dict[str, Any]) -> dict[str, Any]:
    """`fit_epochs`' optimiser, budget and schedule arguments, from a trial's hyperparameters."""
    return {"lr": hp["lr"], "weight_decay": hp["weight_decay"], "max_epochs": hp["max_epochs"],
            "lr_schedule": hp.get("lr_schedule", "constant"), "schedule_epochs": hp.get("schedule_epochs"),
            "label_smoothing": hp.get("label_smoothing", 0.0)}


class HeadStrategy:
    """Frozen backbone: features are extracted once (and cached), each trial trains only a head."""

    def __init__(self, modality: Modality, spec: dict[str, Any], data: SplitData, *, metric: str, patience: int,
                 device: torch.device, feature_batch_size: int, feature_cache: Path | None = None,
                 feature_store: Path | None = None) -> None:
        self.modality, self.spec, self.metric, self.patience, self.device = modality, spec, metric, patience, device
        self.feature_store = feature_store
        self.backbone = modality.build_backbone(spec, pretrained=True).to(device).eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        x_train, x_val = self._features(data, feature_batch_size, feature_cache)
        self.x_train, self.x_val = x_train.to(device), x_val.to(device)
        self.y_train = torch.from_numpy(data.train_labels).long().to(device)
        self.y_val = data.val_labels
        self.n_classes = int(max(data.train_labels.max(), data.val_labels.max())) + 1

    def _features(self, data: SplitData, batch_size: int, cache: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors.torch import load_file, save_file

        if cache is not None and cache.is_file():
            tensors = load_file(str(cache))
            return tensors["train"], tensors["val"]
        if self.feature_store is not None and data.train_ids is not None and data.val_ids is not None:
            # the label stage has encoded these rows already (same encoder spec): read them from its store
            extract = lambda payloads, ids, desc: torch.from_numpy(cached_extract(  # noqa: E731
                self.modality, self.spec, ids, payloads, batch_size=batch_size, cache_path=self.feature_store,
                desc=desc, prune=False))
        else:
            extract = lambda payloads, ids, desc: torch.from_numpy(batched_forward(  # noqa: E731
                self.backbone, self.modality, self.spec, payloads, self.backbone,
                batch_size=batch_size, device=self.device, desc=desc))
        x_train = extract(data.train_payloads, data.train_ids, "features train")
        x_val = extract(data.val_payloads, data.val_ids, "features val")
        if cache is not None:
            with atomic_path(cache) as tmp:
                save_file({"train": x_train.contiguous(), "val": x_val.contiguous()}, str(tmp))
        return x_train, x_val

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

        best, best_epoch, epochs = fit_epochs(head, batches=batches, evaluate=evaluate, patience=self.patience,
                                              device=self.device, on_epoch=on_epoch, **loop_args(hp),
                                              steps_per_epoch=math.ceil(len(self.y_train) / hp["batch_size"]))
        return FitResult(Classifier(self.backbone, head), best, best_epoch, epochs)

    def checkpoint(self, model: Classifier) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}

    def val_logits(self, model: Classifier) -> tuple[np.ndarray, np.ndarray]:
        """`model`'s logits on the val rows (from their cached features) and their labels: what calibration fits."""
        model.head.eval()
        with torch.inference_mode(), autocast(self.device):
            return model.head(self.x_val).float().cpu().numpy(), self.y_val

    def restore(self, state: dict[str, torch.Tensor], hp: dict[str, Any]) -> Classifier:
        head = make_head(self.x_train.shape[1], self.n_classes, hidden=hp["head_hidden"], dropout=hp["dropout"])
        head.load_state_dict(state)
        return Classifier(self.backbone, head.to(self.device))


def class_weights(labels: torch.Tensor, n_classes: int, mode: str) -> torch.Tensor | None:
    """Cross-entropy class weights: None for `none`; for `balanced`, n / (k * count) per class (scikit-learn's
    `class_weight="balanced"`), so a rare class counts as much as a common one, as macro-F1 does."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise StageError(f"params.yaml: train.search.*.class_weight: {mode!r} is not one of ['none', 'balanced']")
    counts = torch.bincount(labels.cpu(), minlength=n_classes).float().clamp(min=1.0)
    return (len(labels) / (n_classes * counts)).to(labels.device)


class ProbeStrategy(HeadStrategy):
    """The linear probe: an L2-regularised multinomial logistic regression on the frozen features, fitted to
    convergence full-batch with L-BFGS (one "epoch"; `l2` is the search parameter).

    An early-stopped head is picked at the epoch where a few hundred validation rows peak, often the first or
    second; on news such heads scored val 0.985-0.993 but test 0.981-0.988, while converged probes scored test
    0.988-0.997 at every `l2` tried (see README, Training).
    """

    def fit(self, hp: dict[str, Any], on_epoch: EpochCallback, *, seed: int) -> FitResult:
        torch.manual_seed(seed)
        head = make_head(self.x_train.shape[1], self.n_classes, hidden=0, dropout=0.0).to(self.device)
        linear = head[-1]
        x, y = self.x_train.float(), self.y_train
        weight = class_weights(y, self.n_classes, hp.get("class_weight", "none"))
        optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=int(hp["max_iter"]), history_size=20,
                                      tolerance_grad=1e-6, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = (nn.functional.cross_entropy(head(x), y, weight=weight)
                    + 0.5 * float(hp["l2"]) * linear.weight.pow(2).sum())
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        head.eval()
        with torch.inference_mode():
            metric = score(self.metric, self.y_val, head(self.x_val.float()).argmax(1).cpu().numpy())
        on_epoch(0, {"val_metric": metric, "train_loss": float(loss.detach())})
        return FitResult(Classifier(self.backbone, head), metric, 0, 1)


class HybridStrategy(ProbeStrategy):
    """The linear probe on the frozen encoder's feature beside TF-IDF of the same text (text only), as one saved
    torch model (stages/modalities/tfidf.py). The vocabulary is fitted on the train rows; the encoder's features
    come from the store like `probe`'s. Short, lexical texts need it: on SMS spam the probe on MiniLM features
    scored below TF-IDF + linear SVM (test macro-F1 0.9355 against 0.9433), the two together above both.
    """

    def __init__(self, modality: Modality, spec: dict[str, Any], data: SplitData, **kwargs: Any) -> None:
        from stages.modalities.tfidf import HybridBackbone, TfidfFeatures, TfidfParams, fit_tfidf

        if not modality.bag_of_words():
            raise StageError(f"params.yaml: train.strategy: 'hybrid' is not available for modality {modality.name!r}")
        params = build(TfidfParams, spec.get("tfidf") or {}, "train.tfidf")
        encoder_spec = {k: v for k, v in spec.items() if k != "tfidf"}
        super().__init__(modality, encoder_spec, data, **kwargs)
        vocab, idf = fit_tfidf(data.train_payloads, params)
        self.backbone = HybridBackbone(self.backbone, TfidfFeatures(vocab, idf, params)).to(self.device)
        self.spec = {**encoder_spec, "tfidf": dataclasses.asdict(params)}
        with torch.no_grad():  # plain tensors: the probe's L-BFGS differentiates through its head on them
            self.x_train = self._combine(self.x_train, data.train_payloads)
            self.x_val = self._combine(self.x_val, data.val_payloads)

    def _combine(self, encoded: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The hybrid feature of `texts` from their stored encoder features, as the saved model computes it."""
        batch = to_device(self.backbone.tfidf.encode(texts), self.device)
        return self.backbone.combine(encoded, batch)


class FullStrategy:
    """Fine-tune the whole pretrained network; each trial starts from the pretrained weights."""

    def __init__(self, modality: Modality, spec: dict[str, Any], data: SplitData, *, metric: str, patience: int,
                 device: torch.device, feature_batch_size: int, feature_cache: Path | None = None,
                 feature_store: Path | None = None) -> None:
        self.modality, self.spec, self.data, self.metric = modality, spec, data, metric
        self.patience, self.device, self.eval_batch = patience, device, feature_batch_size
        self.n_classes = int(max(data.train_labels.max(), data.val_labels.max())) + 1

    pretrained = True

    def build(self, hp: dict[str, Any]) -> Classifier:
        backbone = self.modality.build_backbone(self.spec, pretrained=self.pretrained)
        head = make_head(backbone.feature_dim, self.n_classes, hidden=hp["head_hidden"], dropout=hp["dropout"])
        return Classifier(backbone, head)

    def fit(self, hp: dict[str, Any], on_epoch: EpochCallback, *, seed: int) -> FitResult:
        torch.manual_seed(seed)
        model = self.build(hp).to(self.device)
        backbone = model.backbone
        generator = torch.Generator().manual_seed(seed)
        payloads, labels = self.data.train_payloads, torch.from_numpy(self.data.train_labels).long()

        def batches(epoch: int):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), hp["batch_size"]):
                idx = order[start:start + hp["batch_size"]].tolist()
                batch = self.modality.to_batch([payloads[i] for i in idx], self.spec, backbone)
                yield to_device(batch, self.device), labels[idx].to(self.device)

        def evaluate() -> float:
            model.eval()
            logits = batched_forward(model, self.modality, self.spec, self.data.val_payloads, backbone,
                                     batch_size=self.eval_batch, device=self.device)
            return score(self.metric, self.data.val_labels, logits.argmax(1))

        best, best_epoch, epochs = fit_epochs(model, batches=batches, evaluate=evaluate, patience=self.patience,
                                              device=self.device, on_epoch=on_epoch, **loop_args(hp),
                                              steps_per_epoch=math.ceil(len(labels) / hp["batch_size"]))
        return FitResult(self.finalise(model), best, best_epoch, epochs)

    def finalise(self, model: Classifier) -> Classifier:
        return model

    def val_logits(self, model: Classifier) -> tuple[np.ndarray, np.ndarray]:
        """`model`'s logits on the val rows and their labels: what calibration fits."""
        model.eval()
        return batched_forward(model, self.modality, self.spec, self.data.val_payloads, model.backbone,
                               batch_size=self.eval_batch, device=self.device), self.data.val_labels

    def checkpoint(self, model: Classifier) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor], hp: dict[str, Any]) -> Classifier:
        model = self.build({**hp, "lora_r": 0})
        model.load_state_dict(state)
        return model.to(self.device)


class LoraStrategy(FullStrategy):
    """Low-rank adapters (peft) on the text encoder plus a trained head; merged after training."""

    def __init__(self, modality: Modality, spec: dict[str, Any], data: SplitData, **kwargs: Any) -> None:
        if not modality.lora_targets(spec):
            raise StageError(f"params.yaml: train.strategy: 'lora' is not available for modality {modality.name!r}")
        super().__init__(modality, spec, data, **kwargs)

    def build(self, hp: dict[str, Any]) -> Classifier:
        model = super().build(hp)
        if hp.get("lora_r", 0) <= 0:
            return model
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=int(hp["lora_r"]), lora_alpha=int(hp["lora_alpha"]), lora_dropout=float(hp["dropout"]),
                            target_modules=self.modality.lora_targets(self.spec))
        model.backbone.encoder = get_peft_model(model.backbone.encoder, config)
        return model

    def finalise(self, model: Classifier) -> Classifier:
        # merge the adapters so the saved model is a plain encoder that serving loads unchanged
        if hasattr(model.backbone.encoder, "merge_and_unload"):
            model.backbone.encoder = model.backbone.encoder.merge_and_unload()
        return model


class ScratchStrategy(FullStrategy):
    """The modality's small backbone (`params.train.scratch_model.<modality>`) trained from random weights."""

    pretrained = False


STRATEGIES: dict[str, type] = {"head": HeadStrategy, "probe": ProbeStrategy, "hybrid": HybridStrategy,
                               "lora": LoraStrategy, "full": FullStrategy, "scratch": ScratchStrategy}


def task_train_params(params: dict[str, Any], task: str) -> TrainParams:
    """`train`, with the task's own `tasks.<task>.train` merged over it key by key.

    A task overrides only what differs for its data (an imbalanced task's class weights, a
    longer text model), and every other key keeps the shared value.
    """
    override = ((params.get("tasks") or {}).get(task) or {}).get("train") or {}
    if not isinstance(override, dict):
        raise StageError(f"params.yaml: tasks.{task}.train: expected a mapping, got {override!r}")
    where = f"train (with tasks.{task}.train)" if override else "train"
    return build(TrainParams, deep_merge(params.get("train") or {}, override), where)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override`'s keys replacing its own; mappings on both sides are merged in turn."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def strategy_name(strategy: Any) -> str:
    return next(name for name, cls in STRATEGIES.items() if type(strategy) is cls)


def strategy_choices(tp: TrainParams, modality: str) -> list[str]:
    """The strategies a study of this modality chooses among: `train.strategy` as a name, a list, or per modality."""
    value = tp.strategy
    if isinstance(value, dict):
        if modality not in value:
            raise StageError(f"params.yaml: train.strategy.{modality}: missing key")
        value = value[modality]
    choices = [value] if isinstance(value, str) else list(value)
    if not choices:
        raise StageError("params.yaml: train.strategy: empty list")
    for name in choices:
        get_strategy(name)
        if name not in tp.search:
            raise StageError(f"params.yaml: train.search.{name}: missing key")
    return choices


def strategy_spec(tp: TrainParams, name: str, modality: Modality) -> dict[str, Any]:
    """The model spec a strategy builds: the from-scratch one for `scratch`, the pretrained encoder otherwise."""
    section, where = (tp.scratch_model, "scratch_model") if name == "scratch" else (tp.model, "model")
    if modality.name not in section:
        raise StageError(f"params.yaml: train.{where}.{modality.name}: missing key")
    if name == "hybrid":
        return {**section[modality.name], "tfidf": dict(tp.tfidf or {})}
    return dict(section[modality.name])


def param_prefix(name: str, choices: Sequence[str]) -> str:
    """Optuna parameter names of strategy `name`: `<name>.lr` etc. when the study chooses among strategies."""
    return f"{name}." if len(choices) > 1 else ""


def choose_strategy(trial: optuna.Trial, choices: Sequence[str]) -> str:
    """The trial's strategy: the categorical parameter `strategy` when there is a choice."""
    return trial.suggest_categorical("strategy", list(choices)) if len(choices) > 1 else choices[0]


def leaderboard(trials: Sequence[optuna.trial.FrozenTrial], default: str) -> dict[str, dict[str, Any]]:
    """Best value, its trial, and trial counts per strategy over the study's finished trials."""
    board: dict[str, dict[str, Any]] = {}
    for t in trials:
        if t.state not in FINISHED:
            continue
        row = board.setdefault(t.params.get("strategy", default),
                               {"best_value": None, "best_trial": None, "n_complete": 0, "n_pruned": 0})
        if t.state == optuna.trial.TrialState.PRUNED:
            row["n_pruned"] += 1
            continue
        row["n_complete"] += 1
        if t.value is not None and (row["best_value"] is None or t.value > row["best_value"]):
            row["best_value"], row["best_trial"] = float(t.value), t.number
    return dict(sorted(board.items()))


def history_csv(trials: Sequence[optuna.trial.FrozenTrial], default: str) -> str:
    """The optimisation history (one row per complete trial: value and best so far) for `dvc plots`."""
    rows, best = ["trial,strategy,value,best_value"], -math.inf
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            best = max(best, t.value)
            rows.append(f"{t.number},{t.params.get('strategy', default)},{t.value:.6f},{best:.6f}")
    return "\n".join(rows) + "\n"


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


def journal_lock(journal: Path) -> optuna.storages.journal.JournalFileOpenLock:
    """The journal's write lock: a plain `<journal>.lock` file (O_EXCL).

    Optuna's default lock is a symlink whose target is the journal path as given; with a relative path it
    dangles, and one left behind by `kill -9` made DVC's hashing of the study folder fail (ENOENT) before the
    stage could resume. A plain file hashes fine, and Optuna removes a stale one after its grace period (30 s).
    """
    return optuna.storages.journal.JournalFileOpenLock(str(journal))


def open_storage(url: str | None, study_dir: Path) -> optuna.storages.BaseStorage:
    """A journal file in the study folder by default; an RDB URL (postgresql://, sqlite://) when given."""
    if not url:
        study_dir.mkdir(parents=True, exist_ok=True)
        journal = study_dir / "journal.log"
        backend = optuna.storages.journal.JournalFileBackend(str(journal), lock_obj=journal_lock(journal))
        return optuna.storages.JournalStorage(backend)
    try:
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    except Exception as exc:  # sqlalchemy raises many types for a bad URL or unreachable server
        raise StageError(f"params.yaml: train.storage: cannot open {url.split('@')[-1]}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def recover_stale_trials(study: optuna.Study) -> list[int]:
    """Fail trials left RUNNING by a dead worker and enqueue their params again; return their numbers."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if is_heartbeat_enabled(study._storage):
        optuna.storages.fail_stale_trials(study)
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if is_dead_local_worker(trial.user_attrs.get("worker")):
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            # A worker killed before its first suggest leaves no params: the retry then samples afresh,
            # but it still takes the dead trial's place and names it.
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            recovered.append(trial.number)
    return recovered


def run_trial(trial: optuna.Trial, strategy: Any, space: dict[str, dict[str, Any]], *, seed: int,
              on_epoch: EpochCallback, prefix: str = "") -> FitResult:
    """One Optuna trial: sample, fit with per-epoch reporting and pruning, record the best epoch."""
    hp = suggest(trial, space, prefix=prefix)

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
                     list(val[column]), val["label"].map(index).to_numpy(dtype=np.int64, copy=True),
                     [str(i) for i in train["id"]], [str(i) for i in val["id"]])


def study_name(task: str, data_md5: str, tp: TrainParams, seed: int, choices: Sequence[str]) -> str:
    """Deterministic: the same data and search settings give the same name, so a rerun resumes."""
    settings = {"strategy": choices, "search": {name: tp.search.get(name) for name in choices}, "metric": tp.metric,
                "patience": tp.patience, "pruner": [tp.pruner.kind, tp.pruner.n_startup_trials, tp.pruner.n_warmup_steps],
                "model": tp.model, "scratch_model": tp.scratch_model if "scratch" in choices else None, "seed": seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{task}-{data_md5[:8]}-{digest}"


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trial counts."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED for t in trials)
    running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    return finished, running


# ---------------------------------------------------------------- workers

@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; plain values so it pickles across `spawn`."""

    task: str
    data_path: str
    study_dir: str
    study_name: str
    parent_run_id: str | None
    threads: int
    index: int
    feature_store: str | None = None


class StrategyPool:
    """The study's strategies for one task, each built on first use (`head` extracts or loads its features then)."""

    def __init__(self, params: dict[str, Any], tp: TrainParams, task: str, data_path: str, study_dir: Path,
                 device: torch.device, feature_store: str | None = None) -> None:
        self.labels = list(task_params(params, task)["labels"])
        self.modality = task_modality(params, task)
        self.choices = strategy_choices(tp, self.modality.name)
        self.tp, self.study_dir, self.device, self.task = tp, study_dir, device, task
        self.feature_store = feature_store
        self.data = split_data(read_parquet(data_path), self.modality, self.labels)
        self.data_md5 = file_md5(data_path)
        self._built: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._built:
            spec = strategy_spec(self.tp, name, self.modality)
            where = f"train.{'scratch_model' if name == 'scratch' else 'model'}.{self.modality.name}"
            spec = check_backbone(self.modality, spec, where)
            key = hashlib.sha256(json.dumps([self.data_md5, spec], sort_keys=True).encode()).hexdigest()[:16]
            self._built[name] = get_strategy(name)(
                self.modality, spec, self.data, metric=self.tp.metric, patience=self.tp.patience, device=self.device,
                feature_batch_size=self.tp.feature_batch_size,
                feature_cache=self.study_dir / "features" / f"{key}.safetensors",
                feature_store=(store_path(self.feature_store, self.task, self.modality, spec)
                               if self.feature_store else None))
        return self._built[name]


def checkpoint_path(study_dir: Path, number: int) -> Path:
    return study_dir / "checkpoints" / f"trial-{number}.safetensors"


def run_worker(spec: WorkerSpec) -> None:
    """Join the study and run trials until it has `train.n_trials` finished trials."""
    from safetensors.torch import save_file

    from stages import tracking
    from stages.common import offline_env

    offline_env()
    params = load_params()
    tp = task_train_params(params, spec.task)
    seed = params["base"]["seed"]
    configure_threads(spec.threads)
    device = choose_device()
    study_dir = Path(spec.study_dir)
    pool = StrategyPool(params, tp, spec.task, spec.data_path, study_dir, device, spec.feature_store)
    storage = open_storage(tp.storage, study_dir)
    study = optuna.load_study(study_name=spec.study_name, storage=storage,
                              sampler=optuna.samplers.TPESampler(seed=seed + spec.index), pruner=make_pruner(tp.pruner))
    tracking.configure(params)
    parent_run_id = spec.parent_run_id or tracking.find_study_run(params, spec.task, spec.study_name)
    for name in pool.choices:  # set-up (a frozen encoder's feature pass) is not trial time: the budget starts after
        pool.get(name)
    deadline = None if tp.timeout_s is None else time.time() + tp.timeout_s

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        name = choose_strategy(trial, pool.choices)
        strategy = pool.get(name)
        prefix = param_prefix(name, pool.choices)
        result = tracking.tracked_trial(trial, lambda on_epoch: run_trial(trial, strategy, tp.search[name], seed=seed,
                                                                          on_epoch=on_epoch, prefix=prefix),
                                        metric=tp.metric, parent_run_id=parent_run_id)
        best_so_far = max((t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                           if t.value is not None), default=-math.inf)
        if result.best_metric >= best_so_far:
            with atomic_path(checkpoint_path(study_dir, trial.number)) as tmp:
                save_file(strategy.checkpoint(result.model), str(tmp))
        return result.best_metric

    while deadline is None or time.time() < deadline:
        finished, running = count_trials(study)
        if finished + running >= tp.n_trials:
            break
        study.optimize(objective, n_trials=1, show_progress_bar=False)


def run_workers(spec: WorkerSpec, n_workers: int) -> None:
    """Run `n_workers` workers on one (already created) study: in-process for one, else `spawn`ed processes."""
    if n_workers <= 1:
        run_worker(spec)
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_worker, args=(dataclasses.replace(spec, index=i),), name=f"optuna-worker-{i}")
                 for i in range(n_workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise StageError(f"train: worker(s) {failed} exited non-zero; see the log above")


# ---------------------------------------------------------------- final model

def trial_hyperparameters(sampled: dict[str, Any], space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """All of a trial's hyperparameters: the sampled ones and the search space's `type: fixed` values.

    Optuna records only what `suggest_*` sampled, so a fixed value (e.g. `head_hidden: {type: fixed, value: 0}`)
    is absent from `trial.params`.
    """
    return {**{k: v["value"] for k, v in space.items() if v.get("type") == "fixed"}, **sampled}


def best_hyperparameters(best: optuna.trial.FrozenTrial, tp: TrainParams, choices: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The best trial's strategy and every hyperparameter it trained with, `fixed` ones included (Optuna
    records only sampled values in `trial.params`)."""
    name = best.params.get("strategy", choices[0])
    prefix = param_prefix(name, choices)
    sampled = {k[len(prefix):]: v for k, v in best.params.items() if k != "strategy" and k.startswith(prefix)}
    return name, trial_hyperparameters(sampled, tp.search[name])


def final_model(study: optuna.Study, pool: StrategyPool, tp: TrainParams, study_dir: Path, *,
                seed: int) -> tuple[Classifier, Any, dict[str, Any]]:
    """The best trial's best-epoch checkpoint, or (train.final_model = refit) a refit with the best params;
    returned with the strategy that built it and the full hyperparameters."""
    from safetensors.torch import load_file

    best = study.best_trial
    name, hp = best_hyperparameters(best, tp, pool.choices)
    strategy = pool.get(name)
    path = checkpoint_path(study_dir, best.number)
    if tp.final_model == "best_checkpoint" and path.is_file():
        return strategy.restore(load_file(str(path)), hp), strategy, hp
    if tp.final_model not in ("best_checkpoint", "refit"):
        raise StageError(f"params.yaml: train.final_model: unknown value {tp.final_model!r}; "
                         "known: ['best_checkpoint', 'refit']")
    # refit: best params, on train+val, for the best trial's number of epochs (no early stopping), on the
    # learning-rate schedule of the best trial (its horizon is the trial's max_epochs)
    epochs = int(best.user_attrs.get("best_epoch", hp["max_epochs"] - 1)) + 1
    refit = copy.copy(strategy)
    if isinstance(strategy, HeadStrategy) and tp.final_model == "refit":
        refit.x_train = torch.cat([strategy.x_train, strategy.x_val])
        refit.y_train = torch.cat([strategy.y_train, torch.from_numpy(strategy.y_val).long().to(strategy.device)])
    elif tp.final_model == "refit":
        d = strategy.data
        refit.data = SplitData(d.train_payloads + d.val_payloads, np.concatenate([d.train_labels, d.val_labels]),
                               d.val_payloads, d.val_labels)
    refit.patience = math.inf
    model = refit.fit({**hp, "max_epochs": epochs, "schedule_epochs": hp["max_epochs"]}, lambda e, m: None,
                      seed=seed + best.number).model
    return model, strategy, hp


# ---------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True)
    parser.add_argument("--study-dir", required=True, help="journal, feature cache and checkpoints (persisted)")
    parser.add_argument("--feature-store", help="the label stage's encoder features (folder), read instead of "
                                                "encoding the train and val rows again")
    parser.add_argument("--model-dir", help="where the final model goes (not with --worker-only)")
    parser.add_argument("--summary")
    parser.add_argument("--metrics")
    parser.add_argument("--reports", help="data-quality reports folder to log with the training run")
    parser.add_argument("--history", help="optimisation history CSV (trial, strategy, value, best so far)")
    parser.add_argument("--worker-only", action="store_true",
                        help="join an existing study as one more worker (e.g. on another machine) and exit")
    args = parser.parse_args(argv)

    from stages import tracking

    started = time.time()
    params = load_params()
    tp = task_train_params(params, args.task)
    seed = params["base"]["seed"]
    choices = strategy_choices(tp, task_modality(params, args.task).name)
    study_dir = Path(args.study_dir)
    data_md5 = file_md5(args.inp) if Path(args.inp).is_file() else ""
    if not data_md5:
        raise StageError(f"{args.inp}: input not found (run the upstream stage first: dvc repro)")
    name = study_name(args.task, data_md5, tp, seed, choices)
    total_threads = tp.num_threads or os.cpu_count() or 1
    threads = max(1, total_threads // max(1, tp.n_workers))
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if args.worker_only:
        run_worker(WorkerSpec(args.task, args.inp, str(study_dir), name, None, total_threads, index=os.getpid(),
                              feature_store=args.feature_store))
        return
    if not (args.model_dir and args.summary and args.metrics):
        parser.error("--model-dir, --summary and --metrics are required unless --worker-only")

    configure_threads(total_threads)
    torch.manual_seed(seed)
    if tp.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = choose_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # The study is created once, here, before any worker starts: concurrent create_study races.
    storage = open_storage(tp.storage, study_dir)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=make_pruner(tp.pruner),
                                load_if_exists=True)
    recovered = recover_stale_trials(study)
    if not study.get_trials(deepcopy=False):
        for first in first_trials(tp, choices):
            study.enqueue_trial(first)
    pool = StrategyPool(params, tp, args.task, args.inp, study_dir, device, args.feature_store)
    for choice in choices:  # head features are extracted (and cached in the study folder) once, before workers
        pool.get(choice)

    with tracking.start(params, args.task, run_name=f"study-{name}", study=name) as parent:
        import mlflow

        tracking.log_lineage(args.task, args.inp, data_md5)
        tracking.log_dataset(read_parquet(args.inp), args.inp, data_md5)
        # Params define the study (its name hashes them), so a resumed run logs the same values again;
        # budget and placement can change between attempts, and MLflow params are immutable: those are tags.
        mlflow.log_params({"strategy": ",".join(choices), "metric": tp.metric, "patience": tp.patience,
                           "pruner": tp.pruner.kind, "study_name": name,
                           **{f"model.{k}": v for k, v in strategy_spec(tp, choices[0], pool.modality).items()}})
        mlflow.set_tags({"n_trials": tp.n_trials, "n_workers": tp.n_workers, "final_model": tp.final_model,
                         "device": device.type})
        mlflow.log_dict({"search": {choice: tp.search[choice] for choice in choices}}, "search_space.json")
        if args.reports and Path(args.reports).is_dir():
            mlflow.log_artifacts(args.reports, "data_quality")
        if recovered:
            mlflow.set_tag("optuna.recovered_trials", ",".join(map(str, recovered)))
        run_workers(WorkerSpec(args.task, args.inp, str(study_dir), name, parent.info.run_id, threads, index=0,
                               feature_store=args.feature_store), tp.n_workers)

        trials = study.get_trials(deepcopy=False)
        states = [t.state.name for t in trials]
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise StageError(f"study {name}: no trial completed ({states.count('PRUNED')} pruned, "
                             f"{states.count('FAIL')} failed)")
        best = study.best_trial
        model, strategy, hp = final_model(study, pool, tp, study_dir, seed=seed)
        board = leaderboard(trials, choices[0])
        summary_metrics = {
            f"best_val_{tp.metric}": best.value,
            "n_trials": len(trials),
            "n_complete": states.count("COMPLETE"),
            "n_pruned": states.count("PRUNED"),
            "n_failed": states.count("FAIL"),
            "n_recovered": len(recovered),
            "best_trial": best.number,
            "best_epoch": best.user_attrs.get("best_epoch"),
            "trial_epochs": int(sum(t.user_attrs.get("epochs_run", len(t.intermediate_values)) for t in trials)),
        }
        mlflow.log_metrics({k: float(v) for k, v in summary_metrics.items() if v is not None})
        mlflow.log_metrics({f"leaderboard.{choice}.best_val_{tp.metric}": row["best_value"]
                            for choice, row in board.items() if row["best_value"] is not None})
        mlflow.log_dict(board, "leaderboard.json")
        mlflow.set_tags({f"best.{k}": v for k, v in best.params.items()})  # the best trial can change on resume
        mlflow.set_tag("best.strategy", strategy_name(strategy))
        config = {
            "task": args.task,
            "modality": strategy.modality.name,
            "labels": pool.labels,
            "spec": strategy.spec,
            "strategy": strategy_name(strategy),
            "feature_dim": int(model.backbone.feature_dim),
            "head": {"hidden": int(hp["head_hidden"]), "dropout": float(hp["dropout"])},
            # temperature scaling on the val rows (stages/calibration.py); a refit has trained on them too
            "calibration": calibrate(*strategy.val_logits(model), fitted_on=f"val ({tp.final_model})"),
        }
        mlflow.log_metrics({f"calibration.{k}": v for k, v in config["calibration"].items() if isinstance(v, float)})
        with atomic_path(args.model_dir) as tmp_dir:
            save_classifier(tmp_dir, model, config)
        for path in (study_dir / "checkpoints").glob("trial-*.safetensors"):
            if path != checkpoint_path(study_dir, best.number):
                path.unlink()
        write_json(args.summary, {
            "run_id": parent.info.run_id,
            "experiment_id": parent.info.experiment_id,
            "study_name": name,
            "best_params": best.params,
            "best_strategy": strategy_name(strategy),
            "train_data_md5": data_md5,
            **summary_metrics,
        })
        if args.history:
            with atomic_path(args.history) as tmp:
                tmp.write_text(history_csv(trials, choices[0]))
    summary_metrics["best_strategy"] = strategy_name(strategy)
    summary_metrics["leaderboard"] = board
    summary_metrics["wall_s"] = round(time.time() - started, 1)
    write_json(args.metrics, summary_metrics)
    print(f"train {args.task}: {summary_metrics}")


if __name__ == "__main__":
    run_main(main)
