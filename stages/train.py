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

The machinery lives in `stages/training/`: the epoch loop (`loop.py`), the `Strategy` protocol and registry
(`strategy.py`, strategies in `frozen.py` and `finetune.py`), the study (`study.py`) and its workers
(`workers.py`). This file holds the params, the `train` core and `main`.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from stages.calibration import calibrate
from stages.common import (
    StageError,
    atomic_path,
    build,
    file_md5,
    load_params,
    read_parquet,
    run_main,
    write_json,
)
from stages.model import ADAPTER_FILE, Classifier, choose_device, configure_threads, save_classifier
from stages.modalities import task_modality
from stages.training.strategy import search_space, strategy_choices, strategy_spec
from stages.training.study import (
    checkpoint_path,
    final_model,
    first_trials,
    history_csv,
    leaderboard,
    make_pruner,
    open_storage,
    recover_stale_trials,
    study_name,
)
from stages.training.workers import StrategyPool, WorkerSpec, run_worker, run_workers


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
    peft: dict[str, Any] | None = None   # strategy peft: `method` and each method's own search space
    distributed: dict[str, Any] | None = None  # nproc_per_node: processes training each trial together (DDP)


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


@dataclass
class TrainResult:
    """What a finished study gives the stage to save and log."""

    model: Classifier
    config: dict[str, Any]           # classifier.json
    best: optuna.trial.FrozenTrial
    trials: list[optuna.trial.FrozenTrial]
    summary_metrics: dict[str, Any]
    board: dict[str, dict[str, Any]]
    method: dict[str, Any]           # how the model was trained: method, trainable parameters (Strategy.describe)


def adapter_size(model_dir: Path) -> dict[str, int]:
    """The kept adapter's size on disk (`adapter.safetensors`), when the saved model has one."""
    path = model_dir / ADAPTER_FILE
    return {"adapter_bytes": path.stat().st_size} if path.is_file() else {}


def worker(spec: WorkerSpec) -> None:
    """One worker process: load this checkout's params and join the study (the `spawn` target)."""
    params = load_params()
    run_worker(spec, params, task_train_params(params, spec.task))


def train(spec: WorkerSpec, study: optuna.Study, pool: StrategyPool, tp: TrainParams, *, seed: int,
          recovered: Sequence[int]) -> TrainResult:
    """Run the study's workers until it has its trials, then build the final model, its config and the summary.

    The study exists already (created once, before any worker: concurrent `create_study` races)."""
    run_workers(spec, tp.n_workers, worker)
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise StageError(f"study {spec.study_name}: no trial completed ({states.count('PRUNED')} pruned, "
                         f"{states.count('FAIL')} failed)")
    best = study.best_trial
    model, strategy, hp = final_model(study, pool, tp, Path(spec.study_dir), seed=seed)
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
    config = {
        "task": spec.task,
        "modality": strategy.modality.name,
        "labels": pool.labels,
        "spec": strategy.spec,
        "strategy": strategy.name,
        "feature_dim": int(model.backbone.feature_dim),
        "head": {"hidden": int(hp["head_hidden"]), "dropout": float(hp["dropout"])},
        # temperature scaling on the val rows (stages/calibration.py); a refit has trained on them too
        "calibration": calibrate(*strategy.val_logits(model), fitted_on=f"val ({tp.final_model})"),
        **strategy.saved_config(hp),
    }
    return TrainResult(model, config, best, trials, summary_metrics, leaderboard(trials, pool.choices[0]),
                       strategy.describe(hp))



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
                              feature_store=args.feature_store), params, tp)
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
                         "device": device.type,
                         "nproc_per_node": int((tp.distributed or {}).get("nproc_per_node", 1))})
        mlflow.log_dict({"search": {choice: search_space(tp, choice) for choice in choices}}, "search_space.json")
        if args.reports and Path(args.reports).is_dir():
            mlflow.log_artifacts(args.reports, "data_quality")
        if recovered:
            mlflow.set_tag("optuna.recovered_trials", ",".join(map(str, recovered)))
        spec = WorkerSpec(args.task, args.inp, str(study_dir), name, parent.info.run_id, threads, index=0,
                          feature_store=args.feature_store)
        result = train(spec, study, pool, tp, seed=seed, recovered=recovered)
        best, trials, board, config = result.best, result.trials, result.board, result.config
        summary_metrics = result.summary_metrics
        mlflow.log_metrics({k: float(v) for k, v in summary_metrics.items() if v is not None})
        mlflow.log_metrics({f"leaderboard.{choice}.best_val_{tp.metric}": row["best_value"]
                            for choice, row in board.items() if row["best_value"] is not None})
        mlflow.log_dict(board, "leaderboard.json")
        mlflow.set_tags({f"best.{k}": v for k, v in best.params.items()})  # the best trial can change on resume
        mlflow.set_tag("best.strategy", config["strategy"])
        mlflow.log_metrics({f"calibration.{k}": v for k, v in config["calibration"].items() if isinstance(v, float)})
        with atomic_path(args.model_dir) as tmp_dir:
            save_classifier(tmp_dir, result.model, config)
            method = {**result.method, **adapter_size(tmp_dir)}
        mlflow.set_tags({f"method.{k}": v for k, v in method.items()})  # the best trial, hence these, can change
        for path in (study_dir / "checkpoints").glob("trial-*.safetensors"):
            if path != checkpoint_path(study_dir, best.number):
                path.unlink()
        write_json(args.summary, {
            "run_id": parent.info.run_id,
            "experiment_id": parent.info.experiment_id,
            "study_name": name,
            "best_params": best.params,
            "best_strategy": config["strategy"],
            "train_data_md5": data_md5,
            **summary_metrics,
            "method": method,
        })
        if args.history:
            with atomic_path(args.history) as tmp:
                tmp.write_text(history_csv(trials, choices[0]))
    summary_metrics["best_strategy"] = config["strategy"]
    summary_metrics["leaderboard"] = board
    summary_metrics["method"] = method
    summary_metrics["wall_s"] = round(time.time() - started, 1)
    write_json(args.metrics, summary_metrics)
    print(f"train {args.task}: {summary_metrics}")


if __name__ == "__main__":
    run_main(main)
