"""Training at full strength, against real DVC, a real Optuna journal and a real MLflow SQLite store:
resumption after kill -9, parallel workers on one study, and LoRA."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.pipeline_utils import copy_repo, dvc, edit_params, env, run, tiny_profile

pytestmark = pytest.mark.slow


def load_study(repo: Path):
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(repo / "models" / "spam" / "study" / "journal.log")))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    return optuna.load_study(study_name=names[-1], storage=storage) if names else None


def mlflow_runs(repo: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("finetune-spam")
    return mlflow.search_runs([experiment.experiment_id], output_format="list")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("training") / "repo")

    def profile(params):
        tiny_profile(params)
        params["run"] = ["spam"]
        params["train"]["n_trials"] = 8

    edit_params(repo, profile)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny"], repo)
    dvc(["repro", "augment@spam"], repo)
    return repo


def test_kill_9_during_training_then_repro_resumes_the_study(repo):
    import optuna

    # lora trials take seconds each on the tiny data; probe trials (the text default) finish between two polls
    edit_params(repo, lambda p: p["train"].update(strategy="lora", search={
        **p["train"]["search"], "lora": {**p["train"]["search"]["lora"],
                                         "max_epochs": {"type": "int", "low": 1, "high": 2}}}))
    proc = subprocess.Popen(["dvc", "repro", "train@spam"], cwd=repo, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    finished_before: dict[int, float | None] = {}
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        study = load_study(repo) if (repo / "models/spam/study/journal.log").exists() else None
        if study is None:
            continue
        done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        running = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
        if len(done) >= 2 and running:
            finished_before = {t.number: t.value for t in done}
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert finished_before, "training finished before it could be killed mid-study"
    running_at_kill = [r for r in mlflow_runs(repo) if r.info.status == "RUNNING"]
    assert running_at_kill, "the kill left no RUNNING run to clean up"

    dvc(["repro"], repo)

    study = load_study(repo)
    trials = study.get_trials(deepcopy=False)
    # completed trials are kept, not recomputed
    for number, value in finished_before.items():
        assert trials[number].value == value
    assert sum(t.state.is_finished() and t.state.name != "FAIL" for t in trials) == 8
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed, "the trial running at the kill must be failed"
    retried = [t for t in trials if "retry_of" in t.user_attrs]
    assert {t.user_attrs["retry_of"] for t in retried} == {t.number for t in failed}
    # no MLflow run is left RUNNING. A trial run the kill interrupted ends KILLED; the study's run is resumed by
    # the next attempt and ends FINISHED. (The kill may land before the trial's run starts: then only the study's
    # run was RUNNING. tests/stages/test_tracking.py covers KILLED deterministically.)
    status = {r.info.run_id: r.info.status for r in mlflow_runs(repo)}
    assert "RUNNING" not in status.values()
    assert {r.info.run_id: status[r.info.run_id] for r in running_at_kill} == {
        r.info.run_id: "KILLED" if r.data.tags.get("mlflow.parentRunId") else "FINISHED" for r in running_at_kill}
    summary = json.loads((repo / "models/spam/training.json").read_text())
    assert summary["n_recovered"] == len(failed)
    assert (repo / "models/spam/model/model.safetensors").is_file()


def test_three_workers_share_one_study_without_losing_or_duplicating_trials(repo):
    # head trials train for epochs (a probe trial is a fraction of a second: one worker could take them all)
    edit_params(repo, lambda p: p["train"].update(strategy="head", n_workers=3, n_trials=6, num_threads=3,
                                                  search={**p["train"]["search"],
                                                          "head": {**p["train"]["search"]["head"],
                                                                   "dropout": {"type": "float", "low": 0.0,
                                                                               "high": 0.4}}}))
    dvc(["repro", "train@spam"], repo)
    study = load_study(repo)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # none lost, none duplicated
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 6 <= len(finished) <= 6 + 2  # at most one overshoot per extra worker
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 3
    children = [r for r in mlflow_runs(repo) if r.data.tags.get("optuna.study") == study.study_name
                and r.data.tags.get("mlflow.parentRunId")]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == numbers


def test_lora_strategy_trains_and_serves(repo):
    def lora(params):
        params["train"].update(strategy="lora", n_workers=1, n_trials=1, num_threads=None)
        params["train"]["search"]["lora"].update(max_epochs={"type": "fixed", "value": 1},
                                                 batch_size={"type": "fixed", "value": 16})

    edit_params(repo, lora)
    dvc(["repro"], repo)
    config = json.loads((repo / "models/spam/model/classifier.json").read_text())
    assert config["strategy"] == "lora"
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    registered = json.loads((repo / "models/spam/registered.json").read_text())
    model = mlflow.pyfunc.load_model(registered["model_uri"])
    out = model.predict(pd.DataFrame({"text": ["free prize, call now", "see you soon"]}))
    assert set(out["label"]) <= {"ham", "spam"}
