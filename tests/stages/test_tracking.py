"""Run bookkeeping against a real MLflow SQLite store: runs of dead workers end KILLED, nothing else moves."""

from __future__ import annotations

import pytest

from tests.conftest import dead_worker, live_worker

KIND = "mlflow.experimentKind"  # the tag MLflow 3's UI reads and writes for an experiment's kind


@pytest.fixture
def client(tmp_path):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(previous)


def test_close_dead_runs_kills_only_the_runs_of_dead_workers_on_this_host(client, tmp_path):
    from stages.tracking import close_dead_runs

    experiment = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    dead = dead_worker()
    killed = client.create_run(experiment, tags={"worker": dead})
    alive = client.create_run(experiment, tags={"worker": live_worker()})
    elsewhere = client.create_run(experiment, tags={"worker": f"another-host:{dead.rpartition(':')[2]}"})
    untagged = client.create_run(experiment)
    finished = client.create_run(experiment, tags={"worker": dead})
    client.set_terminated(finished.info.run_id, status="FINISHED")

    assert close_dead_runs(experiment) == [killed.info.run_id]

    status = {run.info.run_id: client.get_run(run.info.run_id).info.status
              for run in (killed, alive, elsewhere, untagged, finished)}
    assert status == {killed.info.run_id: "KILLED", alive.info.run_id: "RUNNING", elsewhere.info.run_id: "RUNNING",
                      untagged.info.run_id: "RUNNING", finished.info.run_id: "FINISHED"}


KILLED_AT_FIRST_TAG_WRITE = """
import os, signal, sys, types
import mlflow, optuna
from stages import tracking

mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment(experiment_id=sys.argv[2])
trial = optuna.create_study().ask()
mlflow.set_tags = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # kill -9 at the first tag write
result = types.SimpleNamespace(best_epoch=0, best_metric=0.5)
tracking.tracked_trial(trial, lambda on_epoch: result, metric="macro_f1")
"""


def test_a_trial_run_killed_as_soon_as_it_exists_is_still_closed(client, tmp_path):
    """The worker tag is written with the run, not after it: no kill point leaves a RUNNING run nobody can close."""
    import subprocess
    import sys

    from stages.tracking import close_dead_runs

    experiment = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    worker = subprocess.run([sys.executable, "-c", KILLED_AT_FIRST_TAG_WRITE, f"sqlite:///{tmp_path / 'mlflow.db'}",
                             experiment], capture_output=True, text=True)
    assert worker.returncode == -9, worker.stderr[-2000:]
    [run] = client.search_runs([experiment])
    assert run.info.status == "RUNNING" and run.data.tags["optuna.trial"] == "0"
    assert close_dead_runs(experiment) == [run.info.run_id]
    assert client.get_run(run.info.run_id).info.status == "KILLED"


def test_experiments_are_created_and_kept_marked_as_model_training(client, tmp_path):
    """MLflow 3's UI opens an experiment on the view its `mlflow.experimentKind` tag names: training runs, not GenAI."""
    from stages import tracking

    params = {"base": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_root": str(tmp_path / "art"),
                       "experiment_prefix": "finetune"}}
    created = tracking.ensure_experiment(params, "news")
    assert client.get_experiment(created).tags.get(KIND) == "custom_model_development"

    # an experiment from before the tag: marked on next use; one whose kind a user set in the UI: left alone
    old = client.create_experiment("finetune-spam")
    chosen = client.create_experiment("finetune-animals", tags={KIND: "genai_development"})
    assert tracking.ensure_experiment(params, "spam") == old
    assert client.get_experiment(old).tags.get(KIND) == "custom_model_development"
    tracking.ensure_experiment(params, "animals")
    assert client.get_experiment(chosen).tags.get(KIND) == "genai_development"


def test_a_queued_dvc_experiment_logs_to_the_project_store_in_its_own_parent_run(client, tmp_path, monkeypatch):
    """`dvc exp run --queue` runs in a temporary copy with DVC_ROOT set to the project: the relative SQLite store
    and artifact root resolve there, and the study's parent run is the experiment's own (tag `dvc.exp`)."""
    import mlflow

    from stages import tracking

    project, copy = tmp_path / "project", tmp_path / "copy"
    project.mkdir()
    copy.mkdir()
    params = {"base": {"tracking_uri": "sqlite:///mlflow.db", "artifact_root": "mlartifacts",
                       "experiment_prefix": "finetune"}}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(copy))  # a workspace run: nothing changes
    assert tracking.project_root() is None and tracking.queued_experiment() is None
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.setenv("DVC_EXP_NAME", "brave-exp")
    assert tracking.queued_experiment() == "brave-exp"
    tracking.configure(params)
    assert mlflow.get_tracking_uri() == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    assert tracking.artifact_location(params) == (project.resolve() / "mlartifacts").as_uri()
    with tracking.start(params, "spam", run_name="study-s", study="s") as run:
        pass
    found = mlflow.get_run(run.info.run_id)
    assert found.data.tags["dvc.exp"] == "brave-exp" and found.info.run_name == "study-s-brave-exp"
    assert tracking.find_study_run(params, "spam", "s") == run.info.run_id
    monkeypatch.setenv("DVC_EXP_NAME", "other-exp")
    assert tracking.find_study_run(params, "spam", "s") is None
    assert (project / "mlflow.db").is_file() and not (copy / "mlflow.db").exists()
