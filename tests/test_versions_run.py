"""Rolling back a task whatever `run:` lists: a matrix over `run` at the version and now, real git, DVC and MLflow.

`dvc.yaml` iterates over `run`, so the stages a commit's dvc.lock names need not exist in today's dvc.yaml, and
DVC keeps the lock entries of stages it no longer generates. Each scenario builds `news` twice (v1, then v2
with more rows per class) while `run` changes around it, then checks that `versions checkout news v1` brings
v1 back byte for byte (data and `registered.json`), names the model trained on it, leaves other tasks alone,
and that `checkout news HEAD` returns to the committed latest. Text tasks at the tiny profile keep each
repro short.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipeline_utils import copy_repo, dvc, edit_params, run, tiny_profile
from tests.robustness_utils import create_input_dirs, data_files

pytestmark = pytest.mark.slow

PIPELINE = ("acquire", "clean", "label", "split", "augment", "train", "evaluate", "compress", "register")
TASK = "news"
# scenario -> (`run` at v1, `run` now). `news` has 12 rows per class at v1 and 18 at v2. "same" and
# "other_task_added" share one build: the latter commits `run: [news, spam]` on top of the former's v2.
SCENARIOS = {
    "same": (["news"], ["news"]),
    "other_task_removed": (["spam", "news"], ["news"]),
    "other_task_added": (["news"], ["news", "spam"]),
}
ROWS = {"v1": 12, "v2": 18}


def versions(repo: Path, *args: str, check: bool = True):
    return run([sys.executable, "-m", "stages.versions", *args], repo, check=check)


def commit(repo: Path, message: str, tag: str | None = None) -> str:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)
    if tag:
        run(["git", "tag", tag], repo)
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


def build(repo: Path, tasks: list[str], rows: int) -> None:
    def edit(params: dict) -> None:
        params["run"] = tasks
        params["tasks"][TASK]["max_per_class"] = rows

    edit_params(repo, edit)
    create_input_dirs(repo, tasks)
    dvc(["repro"], repo)


def lock_stages(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def snapshot(repo: Path, rev: str) -> dict:
    return {"rev": rev, "files": data_files(repo, TASK),
            "registered": (repo / "models" / TASK / "registered.json").read_text(), "lock": lock_stages(repo)}


def task_entries(lock: dict, task: str) -> dict:
    return {key: entry for key, entry in lock.items() if key.endswith(f"@{task}")}


def build_history(repo: Path, then: list[str], now: list[str]) -> tuple[dict, dict]:
    def profile(params: dict) -> None:
        tiny_profile(params)
        params["train"]["n_trials"] = 1  # the model's quality is not under test, its lineage is

    edit_params(repo, profile)
    build(repo, then, ROWS["v1"])
    v1 = snapshot(repo, commit(repo, f"data: news v1, run {then}", "data/news/v1"))
    build(repo, now, ROWS["v2"])
    v2 = snapshot(repo, commit(repo, f"data: news v2, run {now}", "data/news/v2"))
    assert v1["files"] != v2["files"] and v1["registered"] != v2["registered"]
    return v1, v2


@pytest.fixture(scope="module")
def news_only(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("news_only") / "repo")
    return (repo, *build_history(repo, ["news"], ["news"]))


@pytest.fixture(scope="module")
def spam_then_news(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("spam_then_news") / "repo")
    return (repo, *build_history(repo, *SCENARIOS["other_task_removed"]))


@pytest.fixture(scope="module", params=list(SCENARIOS))
def built(request):
    scenario = request.param
    repo, v1, v2 = request.getfixturevalue("spam_then_news" if scenario == "other_task_removed" else "news_only")
    if scenario == "other_task_added":  # news stays at v2; spam is built and committed beside it
        build(repo, SCENARIOS[scenario][1], ROWS["v2"])
        commit(repo, f"run {SCENARIOS[scenario][1]}")
        assert "spam-classifier" in (repo / "models" / "spam" / "registered.json").read_text()
    lock = lock_stages(repo)
    assert set(task_entries(v1["lock"], "spam")) == ({f"{s}@spam" for s in PIPELINE} if "spam" in SCENARIOS[scenario][0]
                                                     else set())
    return scenario, repo, v1, v2, lock


def model_version(snap: dict) -> str:
    return str(json.loads(snap["registered"])["version"])


def test_checkout_v1_and_back_to_head(built):
    scenario, repo, v1, v2, head_lock = built
    others_before = {key: entry for key, entry in head_lock.items() if key not in task_entries(head_lock, TASK)}
    other_tasks = sorted({key.partition("@")[2] for key in others_before})
    other_files = {task: data_files(repo, task) for task in other_tasks}
    assert other_tasks == (["spam"] if scenario != "same" else [])  # DVC keeps entries of stages no longer run

    result = json.loads(versions(repo, "checkout", TASK, "data/news/v1", "--json").stdout)
    assert data_files(repo, TASK) == v1["files"]
    assert (repo / "models" / TASK / "registered.json").read_text() == v1["registered"]
    assert [(m["name"], m["version"]) for m in result["models"]] == [("news-classifier", model_version(v1))]
    assert result["params_changed"] == {f"tasks.{TASK}.max_per_class": {"then": ROWS["v1"], "now": ROWS["v2"]}}
    lock = lock_stages(repo)
    assert task_entries(lock, TASK) == task_entries(v1["lock"], TASK)
    # the other tasks' entries (and so their data) are today's, whatever `run` listed at v1
    assert {key: entry for key, entry in lock.items() if key not in task_entries(lock, TASK)} == others_before
    assert {task: data_files(repo, task) for task in other_tasks} == other_files
    listed = json.loads(versions(repo, "list", TASK, "--json").stdout)
    assert [v["current"] for v in listed] == [True, False]

    versions(repo, "checkout", TASK, "HEAD")
    assert data_files(repo, TASK) == v2["files"]
    assert (repo / "models" / TASK / "registered.json").read_text() == v2["registered"]
    assert run(["git", "status", "--porcelain"], repo).stdout == ""  # dvc.lock and metrics as committed
    assert {task: data_files(repo, task) for task in other_tasks} == other_files


def test_list_and_model_follow_the_task_across_run_changes(built):
    _, repo, v1, v2, _ = built
    listed = json.loads(versions(repo, "list", TASK, "--json").stdout)
    assert [v["rev"] for v in listed] == [v1["rev"], v2["rev"]]
    assert [[(m["name"], m["version"]) for m in v["models"]] for v in listed] == [
        [("news-classifier", model_version(v1))], [("news-classifier", model_version(v2))]]
    for snap in (v1, v2):
        info = json.loads(versions(repo, "model", "news-classifier", model_version(snap), "--json").stdout)
        assert info["rev"] == snap["rev"]
        assert info["restore"] == f"python -m stages.versions checkout {TASK} {snap['rev']}"


def test_a_task_absent_at_that_version_is_one_line(built):
    scenario, repo, v1, _, _ = built
    absent = "spam" if scenario != "other_task_removed" else "animals"
    result = versions(repo, "checkout", absent, "data/news/v1", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {absent}: no dataset version at {v1['rev'][:10]}"), lines
    assert run(["git", "status", "--porcelain"], repo).stdout == ""


def test_an_object_in_neither_cache_nor_remote_is_one_line_and_writes_nothing(built):
    scenario, repo, v1, v2, _ = built
    if scenario != "same":
        pytest.skip("the cache and remote paths do not depend on `run`: checked once")
    raw = f"data/{TASK}/raw.parquet"
    md5 = next(o["md5"] for o in v1["lock"][f"acquire@{TASK}"]["outs"] if o["path"] == raw)
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    # push v1 from its workspace: `--all-tags` resolves the relative default remote from git's root (/dvc-remote)
    versions(repo, "checkout", TASK, "data/news/v1")
    dvc(["push"], repo)
    versions(repo, "checkout", TASK, "HEAD")
    remote = (repo.parent / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]).resolve()
    assert remote.is_file()

    saved = cached.read_bytes()
    cached.chmod(0o644)
    cached.unlink()
    versions(repo, "checkout", TASK, "data/news/v1")  # fetched from the remote
    assert data_files(repo, TASK) == v1["files"] and cached.read_bytes() == saved
    versions(repo, "checkout", TASK, "HEAD")

    try:
        for path in (cached, remote):
            path.chmod(0o644)
            path.unlink()
        result = versions(repo, "checkout", TASK, "data/news/v1", check=False)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {raw} ({md5}) of {TASK} at {v1['rev'][:10]}"), lines
        assert "dvc pull" in lines[0]
        assert data_files(repo, TASK) == v2["files"]
        assert run(["git", "status", "--porcelain"], repo).stdout == ""
    finally:  # the other_task_added scenario goes on in this repository
        for path in (cached, remote):
            path.write_bytes(saved)
