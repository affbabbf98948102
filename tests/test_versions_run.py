"""Rolling back a task whatever `run:` lists: a matrix over `run` at the version and now, real git, DVC and MLflow.

`dvc.yaml` iterates over `run`, so the stages a commit's dvc.lock names need not exist in today's dvc.yaml, and
DVC keeps the lock entries of stages it no longer generates. One repository's history changes `run` around
`news` (text tasks at the tiny profile keep each repro short), and each scenario is a point in it:

    c1  run [news], 12 rows per class          tag data/news/v1
    c2  run [news], 18 rows per class          tag data/news/v2   same:               v1 asked at c2
    c3  run [news, spam] (spam built)                             other_task_added:   v1 asked at c3
    c4  run [news], 24 rows per class          tag data/news/v3   other_task_removed: c3 asked at c4

Each checks that `versions checkout news <asked>` brings that version back byte for byte (data and
`registered.json`), names the model trained on it and leaves other tasks alone, that `checkout news HEAD`
returns to the committed latest, and that `list` and `model` still follow the task.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.pipeline_utils import commit, copy_repo, dvc, edit_params, run, tiny_profile, versions
from tests.robustness_utils import create_input_dirs, data_files

pytestmark = pytest.mark.slow

TASK = "news"
SCENARIOS = ("same", "other_task_added", "other_task_removed")  # in history order: each builds on the one before
ROWS = {"v1": 12, "v2": 18, "v3": 24}


def lock_stages(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def task_entries(lock: dict, task: str) -> dict:
    return {key: entry for key, entry in lock.items() if key.endswith(f"@{task}")}


def build(repo: Path, tasks: list[str], rows: int, message: str, tag: str | None = None) -> dict:
    """Set `run` and news's rows, `dvc repro`, commit: a snapshot of news at that commit."""
    def edit(params: dict) -> None:
        params["run"] = tasks
        params["tasks"][TASK]["max_per_class"] = rows

    edit_params(repo, edit)
    create_input_dirs(repo, tasks)
    dvc(["repro"], repo)
    rev = commit(repo, f"{message}, run {tasks}", tag)
    return {"rev": rev, "files": data_files(repo, TASK), "rows": rows,
            "registered": (repo / "models" / TASK / "registered.json").read_text(), "lock": lock_stages(repo)}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """The commits built so far, by name; `advance` builds up to one (each needs those before it)."""
    repo = copy_repo(tmp_path_factory.mktemp("run_matrix") / "repo")

    def profile(params: dict) -> None:
        tiny_profile(params)
        params["train"]["n_trials"] = 1  # the model's quality is not under test, its lineage is

    edit_params(repo, profile)
    built: dict[str, dict] = {}
    steps = {
        "c1": lambda: build(repo, ["news"], ROWS["v1"], "data: news v1", "data/news/v1"),
        "c2": lambda: build(repo, ["news"], ROWS["v2"], "data: news v2", "data/news/v2"),
        "c3": lambda: build(repo, ["news", "spam"], ROWS["v2"], "add spam"),
        "c4": lambda: build(repo, ["news"], ROWS["v3"], "data: news v3, spam dropped", "data/news/v3"),
    }

    def advance(name: str) -> dict:
        for step, fn in steps.items():
            if step not in built:
                built[step] = fn()
            if step == name:
                return built

    return repo, advance


@pytest.fixture(scope="module", params=SCENARIOS)
def built(request, history):
    """(scenario, repo, asked snapshot, latest news snapshot, news's versions so far, HEAD's dvc.lock stages)."""
    repo, advance = history
    scenario = request.param
    commits = advance({"same": "c2", "other_task_added": "c3", "other_task_removed": "c4"}[scenario])
    if scenario == "other_task_added":
        assert "spam-classifier" in (repo / "models" / "spam" / "registered.json").read_text()
    asked = commits["c3"] if scenario == "other_task_removed" else commits["c1"]
    # the lock asked for names spam's stages only where today's dvc.yaml no longer generates them
    assert bool(task_entries(asked["lock"], "spam")) == (scenario == "other_task_removed")
    news_versions = [commits[c] for c in ("c1", "c2", "c4") if c in commits]
    assert all(a["files"] != b["files"] and a["registered"] != b["registered"]
               for a, b in zip(news_versions, news_versions[1:]))
    return scenario, repo, asked, news_versions[-1], news_versions, lock_stages(repo)


def model_version(snap: dict) -> str:
    return str(json.loads(snap["registered"])["version"])


def test_checkout_and_back_to_head(built):
    scenario, repo, asked, latest, news_versions, head_lock = built
    others_before = {key: entry for key, entry in head_lock.items() if key not in task_entries(head_lock, TASK)}
    other_tasks = sorted({key.partition("@")[2] for key in others_before})
    other_files = {task: data_files(repo, task) for task in other_tasks}
    assert other_tasks == ([] if scenario == "same" else ["spam"])  # DVC keeps entries of stages no longer run

    result = json.loads(versions(repo, "checkout", TASK, asked["rev"], "--json").stdout)
    assert data_files(repo, TASK) == asked["files"]
    assert (repo / "models" / TASK / "registered.json").read_text() == asked["registered"]
    assert [(m["name"], m["version"]) for m in result["models"]] == [("news-classifier", model_version(asked))]
    assert result["params_changed"] == {f"tasks.{TASK}.max_per_class": {"then": asked["rows"], "now": latest["rows"]}}
    lock = lock_stages(repo)
    assert task_entries(lock, TASK) == task_entries(asked["lock"], TASK)
    # the other tasks' entries (and so their data) are today's, whatever `run` listed then
    assert {key: entry for key, entry in lock.items() if key not in task_entries(lock, TASK)} == others_before
    assert {task: data_files(repo, task) for task in other_tasks} == other_files
    listed = json.loads(versions(repo, "list", TASK, "--json").stdout)
    assert [v["rev"] for v in listed if v["current"]] == [next(v["rev"] for v in news_versions
                                                               if v["files"] == asked["files"])]

    versions(repo, "checkout", TASK, "HEAD")
    assert data_files(repo, TASK) == latest["files"]
    assert (repo / "models" / TASK / "registered.json").read_text() == latest["registered"]
    assert run(["git", "status", "--porcelain"], repo).stdout == ""  # dvc.lock and metrics as committed
    assert {task: data_files(repo, task) for task in other_tasks} == other_files


def test_list_and_model_follow_the_task_across_run_changes(built):
    _, repo, _, _, news_versions, _ = built
    listed = json.loads(versions(repo, "list", TASK, "--json").stdout)
    assert [v["rev"] for v in listed] == [v["rev"] for v in news_versions]
    assert [[(m["name"], m["version"]) for m in v["models"]] for v in listed] == [
        [("news-classifier", model_version(v))] for v in news_versions]
    for snap in news_versions:
        info = json.loads(versions(repo, "model", "news-classifier", model_version(snap), "--json").stdout)
        assert info["rev"] == snap["rev"]
        assert info["restore"] == f"python -m stages.versions checkout {TASK} {snap['rev']}"


def test_a_task_absent_at_that_version_is_one_line(built):
    scenario, repo, asked, _, _, _ = built
    absent = "animals" if scenario == "other_task_removed" else "spam"
    result = versions(repo, "checkout", absent, asked["rev"], check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {absent}: no dataset version at {asked['rev'][:10]}"), lines
    assert run(["git", "status", "--porcelain"], repo).stdout == ""


def test_an_object_in_neither_cache_nor_remote_is_one_line_and_writes_nothing(history):
    repo, advance = history  # the cache and the remote do not depend on `run`: one point of the history will do
    commits = advance("c2")
    v1, latest = commits["c1"], [commits[c] for c in ("c1", "c2", "c4") if c in commits][-1]
    raw = f"data/{TASK}/raw.parquet"
    md5 = next(o["md5"] for o in v1["lock"][f"acquire@{TASK}"]["outs"] if o["path"] == raw)
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    # push v1 from its workspace: `--all-tags` resolves the relative default remote from git's root (/dvc-remote)
    versions(repo, "checkout", TASK, v1["rev"])
    dvc(["push"], repo)
    versions(repo, "checkout", TASK, "HEAD")
    remote = (repo.parent / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]).resolve()
    assert remote.is_file()

    saved = cached.read_bytes()
    cached.chmod(0o644)
    cached.unlink()
    versions(repo, "checkout", TASK, v1["rev"])  # fetched from the remote
    assert data_files(repo, TASK) == v1["files"] and cached.read_bytes() == saved
    versions(repo, "checkout", TASK, "HEAD")

    try:
        for path in (cached, remote):
            path.chmod(0o644)
            path.unlink()
        result = versions(repo, "checkout", TASK, v1["rev"], check=False)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {raw} ({md5}) of {TASK} at {v1['rev'][:10]}"), lines
        assert "dvc pull" in lines[0]
        assert data_files(repo, TASK) == latest["files"]
        assert run(["git", "status", "--porcelain"], repo).stdout == ""
    finally:  # other tests go on in this repository
        for path in (cached, remote):
            path.write_bytes(saved)
