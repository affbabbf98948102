"""MLflow plumbing kept out of the stage cores: store set-up, lineage tags, per-trial nested runs.

The default store is SQLite at the repository root (`params.base.tracking_uri`), with artifacts in
`params.base.artifact_root`; the MLFLOW_TRACKING_URI environment variable overrides it. A `dvc exp run --queue`
copy logs to the project's store, not to one inside its temporary folder (see `project_root`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from stages.common import StageError
from stages.workers import is_dead_local_worker, worker_id

# MLflow 3 opens an experiment on the view its kind names (the UI reads and writes this tag); without it, an
# experiment whose runs carry no traces may be shown as GenAI (traces, tokens, an assistant) instead of runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

PINNED_PACKAGES = ("torch", "torchvision", "transformers", "mlflow", "optuna", "dvc", "pandas", "scikit-learn")


def experiment_name(params: dict[str, Any], task: str) -> str:
    return f"{params['base']['experiment_prefix']}-{task}"


def project_root() -> Path | None:
    """The DVC project a `dvc exp run --temp/--queue` copy runs for (DVC sets DVC_ROOT to it); None elsewhere.

    Relative store paths are resolved against it, so every queued experiment logs to the project's one MLflow
    store instead of a throwaway one inside its temporary copy.
    """
    root = os.environ.get("DVC_ROOT")
    if not root or Path(root).resolve() == Path.cwd().resolve():
        return None
    return Path(root).resolve()


def _in_project(uri: str) -> str:
    root = project_root()
    prefix = "sqlite:///"
    if root is None or not uri.startswith(prefix) or uri[len(prefix):].startswith("/"):
        return uri
    return f"{prefix}{root / uri[len(prefix):]}"


def artifact_location(params: dict[str, Any]) -> str:
    path = Path(params["base"]["artifact_root"])
    root = project_root()
    return (root / path if root is not None and not path.is_absolute() else path).resolve().as_uri()


def configure(params: dict[str, Any]) -> None:
    import mlflow

    uri = _in_project(os.environ.get("MLFLOW_TRACKING_URI") or params["base"]["tracking_uri"])
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)


def ensure_experiment(params: dict[str, Any], task: str) -> str:
    """Get or create the task's experiment, with artifacts under `base.artifact_root`, marked model training.

    An experiment created before the kind tag existed gets it too; a kind someone chose in the UI is kept.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    configure(params)
    name = experiment_name(params, task)
    try:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            location = artifact_location(params)
            return mlflow.create_experiment(name, artifact_location=location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    except MlflowException as exc:
        raise StageError(f"MLflow store {mlflow.get_tracking_uri()}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # sqlite locked, unreachable server, ...
        raise StageError(f"MLflow store {mlflow.get_tracking_uri()}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def lineage_tags() -> dict[str, str]:
    from importlib import metadata

    tags = {
        "git.commit": git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower(),
    }
    for package in PINNED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"version.{package}"] = metadata.version(package)
    return tags


def worker_tags() -> dict[str, str]:
    return {"worker": worker_id()}


def close_dead_runs(experiment_id: str) -> list[str]:
    """End as KILLED every RUNNING run of this host whose process is gone (e.g. after kill -9)."""
    import mlflow
    from mlflow import MlflowClient

    runs = mlflow.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", output_format="list")
    closed = []
    for run in runs:
        worker = run.data.tags.get("worker")
        if worker and is_dead_local_worker(worker):
            MlflowClient().set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


def queued_experiment() -> str | None:
    """The DVC experiment this run is, when it runs in its own temporary copy (`dvc exp run --queue/--temp`).

    Such a copy resumes its own copy of the study folder, so its trials are its own: its parent run is kept
    apart (tag `dvc.exp`) instead of mixing trial numbers with the workspace's or another queued run's.
    """
    return os.environ.get("DVC_EXP_NAME") if project_root() is not None else None


def find_study_run(params: dict[str, Any], task: str, study: str) -> str | None:
    """The parent run of an Optuna study, if one was started before (the newest)."""
    import mlflow

    experiment_id = ensure_experiment(params, task)
    query = f"tags.`optuna.study` = '{study}' and tags.stage = 'train'"
    exp = queued_experiment()
    if exp:
        query += f" and tags.`dvc.exp` = '{exp}'"
    runs = mlflow.search_runs([experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


@contextlib.contextmanager
def start(params: dict[str, Any], task: str, *, run_name: str, study: str) -> Iterator[Any]:
    """Start, or resume after a crash, the study's parent run, tagged with task, study and git lineage."""
    import mlflow

    experiment_id = ensure_experiment(params, task)
    close_dead_runs(experiment_id)
    existing = find_study_run(params, task, study)
    # tagged as it is created or resumed (see tracked_trial)
    tags = {"task": task, "stage": "train", "optuna.study": study, **worker_tags(), **lineage_tags()}
    exp = queued_experiment()
    if exp:
        tags["dvc.exp"] = exp
    if existing:
        run_ctx = mlflow.start_run(run_id=existing, tags=tags)
    else:
        run_ctx = mlflow.start_run(experiment_id=experiment_id, run_name=f"{run_name}-{exp}" if exp else run_name,
                                   tags=tags)
    with run_ctx as run:
        yield run


@contextlib.contextmanager
def resume(params: dict[str, Any], run_id: str) -> Iterator[Any]:
    """Reopen a finished run (the training run) to add evaluation results or a model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    configure(params)
    try:
        close_dead_runs(mlflow.get_run(run_id).info.experiment_id)
        run = mlflow.start_run(run_id=run_id)
    except MlflowException as exc:
        raise StageError(f"MLflow run {run_id}: {str(exc).splitlines()[0]} (rerun train: dvc repro -f train)") from None
    with run:
        mlflow.set_tags(worker_tags())
        yield run


def log_dataset(frame: Any, path: str, md5: str) -> None:
    """Log the training table as an MLflow dataset input whose digest is its DVC md5."""
    import mlflow

    columns = [c for c in frame.columns if frame[c].dtype != object or c in ("label", "split")]
    dataset = mlflow.data.from_pandas(frame[columns], source=path, name=Path(path).stem, targets="label", digest=md5)
    mlflow.log_input(dataset, context="training")


def lock_hashes(task: str, lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """`{"dvc.<stage>.<out>": md5}` for the task's data outputs recorded in dvc.lock so far."""
    import yaml

    path = Path(lock_path)
    if not path.is_file():
        return {}
    lock = yaml.safe_load(path.read_text()) or {}
    tags = {}
    for stage, entry in (lock.get("stages") or {}).items():
        name, _, item = stage.partition("@")
        if item != task:
            continue
        for out in entry.get("outs") or []:
            if out.get("path", "").startswith("data/") and "md5" in out:
                tags[f"dvc.{name}.{Path(out['path']).name}"] = out["md5"]
    return tags


def log_lineage(task: str, data_path: str, data_md5: str) -> None:
    """Tag the run with the DVC md5 of the exact data it trained on, and of every upstream output."""
    import mlflow

    mlflow.set_tags({"data.path": data_path, "data.md5": data_md5, **lock_hashes(task)})


def log_baseline(params: dict[str, Any], experiment_id: str, name: str, metrics: dict[str, float], *, study: str,
                 test_digest: str, data_md5: str) -> str:
    """A baseline's test scores as a run of its own in the task's experiment, next to the study it is compared
    with (same test digest), so the MLflow UI compares them; returns the run id."""
    import mlflow

    configure(params)
    tags = {"stage": "evaluate", "baseline": name, "optuna.study": study, "test_digest": test_digest,
            "data.md5": data_md5, **lineage_tags()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"baseline-{name}", tags=tags) as run:
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in metrics.items()})
    return run.info.run_id


def tracked_trial(trial: Any, fit: Callable[[Callable[[int, dict[str, float]], None]], Any], *, metric: str,
                  parent_run_id: str | None = None) -> Any:
    """Run `fit(on_epoch)` inside a nested MLflow run for this Optuna trial.

    Per-epoch metrics are logged with the epoch as step. A pruned trial ends FINISHED with tag
    `optuna.state=PRUNED`; a failing one ends FAILED; the exception is re-raised for Optuna.
    """
    import mlflow
    import optuna

    parent = mlflow.get_run(parent_run_id) if parent_run_id else mlflow.active_run()
    experiment_id = parent.info.experiment_id if parent else None
    # the worker tag is written with the run itself: a kill between creating a run and tagging it would leave
    # a RUNNING run that close_dead_runs cannot attribute to a dead worker
    tags = {"optuna.trial": str(trial.number), "optuna.study": trial.study.study_name, **worker_tags()}
    with mlflow.start_run(run_name=f"trial-{trial.number}", experiment_id=experiment_id, tags=tags,
                          parent_run_id=parent.info.run_id if parent else None, nested=parent is not None) as run:

        def on_epoch(epoch: int, values: dict[str, float]) -> None:
            mlflow.log_metrics({f"val_{metric}" if k == "val_metric" else k: v for k, v in values.items()}, step=epoch)

        try:
            result = fit(on_epoch)
        except optuna.TrialPruned:
            mlflow.log_params(trial.params)
            mlflow.set_tag("optuna.state", "PRUNED")
            mlflow.end_run(status="FINISHED")  # pruning is a normal outcome, not a failure
            raise
        except Exception:
            mlflow.set_tag("optuna.state", "FAIL")
            raise  # the context manager ends the run as FAILED
        mlflow.log_params(trial.params)
        mlflow.set_tags({"optuna.state": "COMPLETE", "best_epoch": str(result.best_epoch)})
        mlflow.log_metric(f"best_val_{metric}", result.best_metric)
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
    return result
