"""The Optuna study: its search space, storage (journal file with a plain lock, or an RDB), the recovery of
trials a dead worker left RUNNING, one trial's run, its checkpoints, the leaderboard and the final model.

Worker identity and liveness (`host:pid`) live in `stages/workers.py`, one layer down, because tracking ends
the MLflow runs of dead workers with the same test.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from stages.common import StageError
from stages.model import Classifier
from stages.training.distributed import fit_distributed
from stages.training.loop import EpochCallback
from stages.training.strategy import FitResult, search_space
from stages.workers import is_dead_local_worker

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


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


def first_trials(tp: Any, choices: Sequence[str]) -> list[dict[str, Any]]:
    """The trials a fresh study runs first: one per strategy, in the listed order (cheap first), with the
    `default` values its search space names (a known good start); the sampler takes over after them.

    Empty when there is nothing to pin (one strategy, no defaults). A default outside its range fails here.
    """
    trials = []
    for choice in choices:
        prefix = param_prefix(choice, choices)
        trial: dict[str, Any] = {"strategy": choice} if len(choices) > 1 else {}
        for name, spec in search_space(tp, choice).items():
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


# ---------------------------------------------------------------- study

def make_pruner(params: Any) -> optuna.pruners.BasePruner:
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
              on_epoch: EpochCallback, prefix: str = "", nproc: int = 1) -> FitResult:
    """One Optuna trial: sample, fit with per-epoch reporting and pruning, record the best epoch. With `nproc` > 1
    the fit runs under DDP on that many launched processes; this one reports for rank 0
    (stages/training/distributed.py)."""
    hp = suggest(trial, space, prefix=prefix)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        on_epoch(epoch, metrics)
        trial.report(metrics["val_metric"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    result = fit_distributed(strategy, hp, report, seed=seed + trial.number, nproc=nproc)
    trial.set_user_attr("best_epoch", result.best_epoch)
    trial.set_user_attr("epochs_run", result.epochs_run)
    return result


def study_name(task: str, data_md5: str, tp: Any, seed: int, choices: Sequence[str]) -> str:
    """Deterministic: the same data and search settings give the same name, so a rerun resumes."""
    settings = {"strategy": choices, "search": {name: search_space(tp, name) for name in choices},
                "metric": tp.metric, "patience": tp.patience,
                "pruner": [tp.pruner.kind, tp.pruner.n_startup_trials, tp.pruner.n_warmup_steps],
                "model": tp.model, "scratch_model": tp.scratch_model if "scratch" in choices else None, "seed": seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{task}-{data_md5[:8]}-{digest}"


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trial counts."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state in FINISHED for t in trials)
    running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    return finished, running


def checkpoint_path(study_dir: Path, number: int) -> Path:
    return study_dir / "checkpoints" / f"trial-{number}.safetensors"


def trial_hyperparameters(sampled: dict[str, Any], space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """All of a trial's hyperparameters: the sampled ones and the search space's `type: fixed` values.

    Optuna records only what `suggest_*` sampled, so a fixed value (e.g. `head_hidden: {type: fixed, value: 0}`)
    is absent from `trial.params`.
    """
    return {**{k: v["value"] for k, v in space.items() if v.get("type") == "fixed"}, **sampled}


def best_hyperparameters(best: optuna.trial.FrozenTrial, tp: Any, choices: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The best trial's strategy and every hyperparameter it trained with, `fixed` ones included (Optuna
    records only sampled values in `trial.params`)."""
    name = best.params.get("strategy", choices[0])
    prefix = param_prefix(name, choices)
    sampled = {k[len(prefix):]: v for k, v in best.params.items() if k != "strategy" and k.startswith(prefix)}
    return name, trial_hyperparameters(sampled, search_space(tp, name))


def final_model(study: optuna.Study, pool: Any, tp: Any, study_dir: Path, *,
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
    # learning-rate schedule of the best trial (its horizon is the trial's max_epochs); a missing checkpoint is
    # refitted the same way on the train rows only
    epochs = int(best.user_attrs.get("best_epoch", hp["max_epochs"] - 1)) + 1
    model = strategy.refit(hp, epochs=epochs, seed=seed + best.number, with_val=tp.final_model == "refit")
    return model, strategy, hp
