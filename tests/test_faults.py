"""Faults, with real processes and signals: kill -9 in a data stage and in training, an unusable MLflow store.

One tiny `spam` pipeline (bundled data) is built up to augment in a temp copy of the repository; its
outputs are the uninterrupted reference. Each kill test starts `dvc repro` in its own process group,
waits until the stage's Python process is running, sleeps a random moment (seed printed on failure;
set FAULT_SEED to replay) and sends SIGKILL to the whole group, as a crash or an OOM kill would.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.pipeline_utils import copy_repo, dvc, env, run
from tests.robustness_utils import DATA_STAGES, apply_spam_profile, data_files

pytestmark = pytest.mark.slow

TASK = "spam"
SEED = int(os.environ.get("FAULT_SEED", random.SystemRandom().randrange(10**6)))


def metrics_files(repo: Path) -> dict[str, bytes]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: (repo / o["path"]).read_bytes() for s in DATA_STAGES
            for o in lock[f"{s}@{TASK}"]["outs"] if o["path"].startswith("metrics/")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("faults") / "repo")
    apply_spam_profile(repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny spam"], repo)
    dvc(["repro", f"augment@{TASK}"], repo)
    return repo, data_files(repo, TASK), metrics_files(repo)


def start_repro(repo: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", *args], cwd=repo,
                            env={**env(), **(extra_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_for_stage_process(proc: subprocess.Popen, module: str, timeout: float = 120) -> bool:
    """True once a descendant `python -m stages.<module>` is running; False if dvc ended first."""
    deadline = time.time() + timeout
    parent = psutil.Process(proc.pid)
    while time.time() < deadline and proc.poll() is None:
        try:
            for child in parent.children(recursive=True):
                if f"stages.{module}" in " ".join(child.cmdline()):
                    return True
        except psutil.Error:
            pass
        time.sleep(0.05)
    return False


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_kill_9_in_a_data_stage_then_repro_is_byte_identical(reference, stage):
    repo, files, metrics = reference
    rng = random.Random(f"{SEED}-{stage}")
    delay = rng.uniform(0.0, 2.0)
    proc = start_repro(repo, "-f", "-s", f"{stage}@{TASK}")
    started = wait_for_stage_process(proc, stage)
    time.sleep(delay)
    kill_group(proc)
    again = dvc(["repro", f"augment@{TASK}"], repo)
    assert "Traceback" not in again.stdout + again.stderr
    context = f"FAULT_SEED={SEED} stage={stage} delay={delay:.2f}s stage_started={started}"
    assert data_files(repo, TASK) == files, context
    assert metrics_files(repo) == metrics, context
    assert "up to date" in dvc(["status", f"augment@{TASK}"], repo).stdout, context


# ---------------------------------------------------------------- an unusable MLflow store


def train_outs(repo: Path) -> list[Path]:
    """The train stage's outputs for the task, from dvc.yaml (persisted ones, like a resumable study, excluded)."""
    body = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train"]["do"]
    paths = []
    for entry in [*(body.get("outs") or []), *(body.get("metrics") or [])]:
        path, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        if not (opts or {}).get("persist"):
            paths.append(repo / path.replace("${item}", TASK))
    return paths


def stray_temp_files(repo: Path) -> list[Path]:
    return [p for d in ("models", "metrics") for p in (repo / d).rglob("*.tmp")]


def assert_clean_failure(result: subprocess.CompletedProcess, repo: Path, *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    for path in train_outs(repo):
        assert not path.exists(), f"{path} written although the MLflow store failed"
    assert not stray_temp_files(repo)


def test_unreachable_mlflow_server_fails_training_in_one_line(reference):
    repo, _, _ = reference
    result = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", f"train@{TASK}"], cwd=repo,
                            env={**env(), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
                                 "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"},
                            capture_output=True, text=True, timeout=300)
    assert_clean_failure(result, repo, "MLflow store", "127.0.0.1:9")


def test_locked_mlflow_store_fails_training_in_one_line(reference, tmp_path):
    repo, _, _ = reference
    db = tmp_path / "locked.db"
    import mlflow

    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # create the schema
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the store, as a stuck process would
    try:
        result = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", f"train@{TASK}"], cwd=repo,
                                env={**env(), "MLFLOW_TRACKING_URI": f"sqlite:///{db}"},
                                capture_output=True, text=True, timeout=300)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_clean_failure(result, repo, "MLflow store", "locked")


# ---------------------------------------------------------------- kill -9 during training


def trial_runs_started(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM tags WHERE key = 'optuna.trial'").fetchone()[0]
    except sqlite3.Error:
        return 0


def study_journals(repo: Path) -> list[Path]:
    """Optuna journal files among the train stage's outputs (a file, or files inside a study folder)."""
    body = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train"]["do"]
    found = []
    for entry in body.get("outs") or []:
        path = repo / (entry if isinstance(entry, str) else next(iter(entry))).replace("${item}", TASK)
        if "study" not in path.name:
            continue
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        found += [p for p in candidates if "journal" in p.name or p.suffix == ".log"]
    return found


@pytest.fixture(scope="module")
def killed_training(reference):
    repo, _, _ = reference
    proc = start_repro(repo, f"train@{TASK}")
    deadline = time.time() + 300
    while trial_runs_started(repo / "mlflow.db") < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(random.Random(f"{SEED}-train").uniform(0.0, 1.0))
    assert proc.poll() is None, "training finished before it could be killed"
    killed_at = time.time()
    kill_group(proc)
    rerun = dvc(["repro", f"train@{TASK}"], repo)
    return repo, killed_at, rerun


def test_kill_9_during_training_leaves_no_run_running(killed_training):
    repo, _, rerun = killed_training
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    assert runs, "no runs recorded"
    running = [(r.info.run_name, r.info.status) for r in runs if r.info.status == "RUNNING"]
    assert running == [], f"FAULT_SEED={SEED}: runs left RUNNING after the next dvc repro: {running}"


def test_kill_9_during_training_then_repro_resumes_the_study(killed_training):
    import optuna

    repo, killed_at, _ = killed_training
    journals = study_journals(repo)
    assert journals, "no Optuna journal among the train outputs"
    trials = []
    for journal in journals:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        for summary in optuna.get_all_study_summaries(storage):
            trials += optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    before = [t for t in trials if t.datetime_start and t.datetime_start.timestamp() < killed_at]
    assert before, f"FAULT_SEED={SEED}: the rerun started a new study; no trial from before the kill survived"


def test_a_journal_lock_left_by_kill_9_does_not_break_the_next_repro(killed_training):
    """The lock Optuna leaves when its holder dies mid-write: the next `dvc repro` must hash the study folder
    and resume. (Optuna's default symlink lock dangled here and failed DVC with ENOENT.)"""
    import contextlib

    from stages.training.study import journal_lock

    repo, _, _ = killed_training  # a study that exists, after a kill and a resume
    journal = Path("models") / TASK / "study" / "journal.log"  # relative, as dvc.yaml passes it
    with contextlib.chdir(repo):
        journal_lock(journal).acquire()  # never released, as after kill -9 during a journal write
    lock = repo / f"{journal}.lock"
    past_grace = time.time() - 3600  # older than Optuna's 30 s grace period, so the wait is not part of the test
    os.utime(lock, (past_grace, past_grace), follow_symlinks=False)
    dvc(["repro", "-f", f"train@{TASK}"], repo)
    assert not lock.exists() and not lock.is_symlink()
