"""The `Strategy` protocol and its registry: how a study trains, checkpoints, restores and refits a model.

A strategy is a class registered under its `train.strategy` name (`@register("probe")`); the study and the
train stage call its methods and never test which one it is. The built-in ones live in `frozen.py` (features
from a frozen backbone) and `finetune.py` (the backbone trains too); they are imported on first lookup.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from stages.common import StageError
from stages.modalities import Modality
from stages.model import Classifier
from stages.training.loop import EpochCallback

# modules whose classes register the built-in strategies; imported lazily so the registry is cheap to import
_BUILTIN = ("stages.training.frozen", "stages.training.finetune", "stages.training.efficient")


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


class Strategy(Protocol):
    """What the study needs of a way to train: built once per study from the modality, the model spec and the
    split; each trial calls `fit` with its hyperparameters."""

    name: str            # the registry name, set by `register`
    spec_section: str    # the params section its model spec comes from: `model` or `scratch_model`
    modality: Modality
    spec: dict[str, Any]

    def __init__(self, modality: Modality, spec: dict[str, Any], data: SplitData, *, metric: str, patience: int,
                 device: torch.device, feature_batch_size: int, feature_cache: Path | None = None,
                 feature_store: Path | None = None) -> None: ...

    @classmethod
    def complete_spec(cls, spec: dict[str, Any], tp: Any) -> dict[str, Any]:
        """The model spec from its params section, with whatever else of `train` the strategy builds from."""

    @classmethod
    def search_space(cls, tp: Any) -> dict[str, dict[str, Any]]:
        """The trials' search space (params.yaml `train.search.<name>`, and whatever the strategy adds)."""

    def fit(self, hp: dict[str, Any], on_epoch: EpochCallback, *, seed: int) -> FitResult:
        """Train one model; `on_epoch(epoch, metrics)` after each epoch (it may raise TrialPruned)."""

    def checkpoint(self, model: Classifier) -> dict[str, torch.Tensor]:
        """The tensors `restore` needs to rebuild `model` (safetensors-ready: CPU, contiguous)."""

    def restore(self, state: dict[str, torch.Tensor], hp: dict[str, Any]) -> Classifier:
        """The model a `checkpoint` was taken of."""

    def refit(self, hp: dict[str, Any], *, epochs: int, seed: int, with_val: bool) -> Classifier:
        """Train again with `hp` for exactly `epochs` epochs (no early stopping), on train+val when `with_val`."""

    def val_logits(self, model: Classifier) -> tuple[np.ndarray, np.ndarray]:
        """`model`'s logits on the val rows and their labels: what calibration fits."""

    def saved_config(self, hp: dict[str, Any]) -> dict[str, Any]:
        """Keys the saved model's `classifier.json` needs beyond the common ones (a kept adapter's description)."""

    def describe(self, hp: dict[str, Any]) -> dict[str, Any]:
        """What the model card and train metrics report of a model trained with `hp`: its method and trainable
        parameters."""


class StrategyDefaults:
    """What most strategies share: the model spec of `train.model` as written, and `train.search.<name>`."""

    name: str
    spec_section = "model"

    @classmethod
    def complete_spec(cls, spec: dict[str, Any], tp: Any) -> dict[str, Any]:
        return spec

    @classmethod
    def search_space(cls, tp: Any) -> dict[str, dict[str, Any]]:
        return tp.search[cls.name]


STRATEGIES: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: file a strategy class under its `train.strategy` name."""

    def wrap(cls: type) -> type:
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return wrap


def get_strategy(name: str) -> type:
    """The strategy class registered as `name`, or a one-line error naming the known ones."""
    for module in _BUILTIN:
        importlib.import_module(module)
    try:
        return STRATEGIES[name]
    except KeyError:
        raise StageError(f"params.yaml: train.strategy: unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None


def strategy_choices(tp: Any, modality: str) -> list[str]:
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


def search_space(tp: Any, name: str) -> dict[str, dict[str, Any]] | None:
    """Strategy `name`'s search space (None when params.yaml has no `train.search.<name>`)."""
    return get_strategy(name).search_space(tp) if name in tp.search else None


def strategy_spec(tp: Any, name: str, modality: Modality) -> dict[str, Any]:
    """The model spec a strategy builds: its class's `spec_section` of params (`model`, the pretrained encoder, or
    `scratch_model`) for the modality, completed by the class (`hybrid` adds its TF-IDF settings)."""
    cls = get_strategy(name)
    section = getattr(tp, cls.spec_section)
    if modality.name not in section:
        raise StageError(f"params.yaml: train.{cls.spec_section}.{modality.name}: missing key")
    return cls.complete_spec(dict(section[modality.name]), tp)


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

