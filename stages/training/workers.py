"""The study's workers: each joins the study and runs trials until it has `train.n_trials` finished ones.

`run_workers` runs one in-process or several as `spawn`ed processes; each process loads its own params through
the `target` the train stage gives it (the stage owns its params), so this module never reaches up to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from stages.common import StageError, atomic_path, file_md5, read_parquet, task_params
from stages.labeling.features import store_path
from stages.modalities import check_backbone, task_modality
from stages.model import choose_device, configure_threads
from stages.training.strategy import get_strategy, search_space, split_data, strategy_choices, strategy_spec
from stages.training.study import (
    checkpoint_path,
    choose_strategy,
    count_trials,
    make_pruner,
    open_storage,
    param_prefix,
    run_trial,
)
from stages.workers import worker_id


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

    def __init__(self, params: dict[str, Any], tp: Any, task: str, data_path: str, study_dir: Path,
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
            where = f"train.{get_strategy(name).spec_section}.{self.modality.name}"
            spec = check_backbone(self.modality, spec, where)
            key = hashlib.sha256(json.dumps([self.data_md5, spec], sort_keys=True).encode()).hexdigest()[:16]
            self._built[name] = get_strategy(name)(
                self.modality, spec, self.data, metric=self.tp.metric, patience=self.tp.patience, device=self.device,
                feature_batch_size=self.tp.feature_batch_size,
                feature_cache=self.study_dir / "features" / f"{key}.safetensors",
                feature_store=(store_path(self.feature_store, self.task, self.modality, spec)
                               if self.feature_store else None))
        return self._built[name]


def run_worker(spec: WorkerSpec, params: dict[str, Any], tp: Any) -> None:
    """Join the study and run trials until it has `train.n_trials` (of `tp`, the task's train params) finished
    trials. `params` is the whole params.yaml."""
    from safetensors.torch import save_file

    from stages import tracking
    from stages.common import offline_env

    offline_env()
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
    nproc = int((tp.distributed or {}).get("nproc_per_node", 1))  # processes per trial (DDP)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        name = choose_strategy(trial, pool.choices)
        strategy = pool.get(name)
        prefix = param_prefix(name, pool.choices)
        space = search_space(tp, name)
        result = tracking.tracked_trial(trial, lambda on_epoch: run_trial(trial, strategy, space, seed=seed,
                                                                          on_epoch=on_epoch, prefix=prefix,
                                                                          nproc=nproc),
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


def run_workers(spec: WorkerSpec, n_workers: int, target: Callable[[WorkerSpec], None]) -> None:
    """Run `n_workers` workers on one (already created) study: `target(spec)` in-process for one, else in `spawn`ed
    processes (`target` loads the params and calls `run_worker`)."""
    if n_workers <= 1:
        target(spec)
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=(dataclasses.replace(spec, index=i),), name=f"optuna-worker-{i}")
                 for i in range(n_workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        raise StageError(f"train: worker(s) {failed} exited non-zero; see the log above")


