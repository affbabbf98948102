"""Dataset versions end to end, with real git, DVC and MLflow: rollback round trip, lineage, remote, verify.

One tiny `spam` pipeline is built twice in a temp copy of the repository from a `table` source in
`data/spam/source/`, versioned with `dvc add` as the README advises: v1, then v2 after editing the CSV in
place (rows added, rows removed, a label changed) and a plain `dvc repro`, which must notice the edit and
rerun acquire through register. The tests then roll back to v1 and forward to v2 through
`python -m stages.versions`, push to the default remote, wipe the cache and pull, and corrupt a cache file
for `versions verify` to find.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline_utils import commit, copy_repo, dvc, run, stages_run, versions
from tests.robustness_utils import apply_spam_profile, cache_tracked_inputs, synthetic_sms, write_csv
from tests.robustness_utils import data_files as task_files

pytestmark = pytest.mark.slow

TASK = "spam"
SOURCE_DIR = "data/spam/source"
SOURCE_FILE = "spam.csv"
SOURCE = f"{SOURCE_DIR}/{SOURCE_FILE}"
PIPELINE = ("acquire", "clean", "label", "split", "augment", "train", "evaluate", "compress", "register")
TIMINGS: dict[str, float] = {}


def timed(name: str, fn, *args, **kwargs):
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        TIMINGS[name] = round(time.perf_counter() - start, 1)


def data_files(repo: Path) -> dict[str, bytes]:
    return task_files(repo, TASK)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("versions") / "repo")
    rows = synthetic_sms(40, seed=1)
    (repo / SOURCE_DIR / "README.md").unlink()  # the packaged task's note: this task now reads its own file
    write_csv(repo / SOURCE, rows)

    apply_spam_profile(repo, SOURCE_FILE)
    dvc(["add", SOURCE_DIR], repo)
    cache_tracked_inputs(repo)
    commit(repo, "code and params")
    timed("build v1 (dvc repro)", dvc, ["repro"], repo)
    v1 = {"rev": commit(repo, "data: spam v1", "data/spam/v1"), "files": data_files(repo),
          "registered": (repo / "models" / TASK / "registered.json").read_text()}

    # v2: the CSV edited in place (rows added and removed, a label changed), then a plain `dvc repro`
    changed = [r for i, r in enumerate(rows) if i not in (0, 1, 2, 40, 41, 42)] + synthetic_sms(5, seed=2)
    changed[10] = {**changed[10], "label": "spam" if changed[10]["label"] == "ham" else "ham"}
    write_csv(repo / SOURCE, changed)
    status = dvc(["status", f"acquire@{TASK}"], repo).stdout
    assert "modified" in status and SOURCE_DIR in status, status
    second = timed("build v2 (dvc repro)", dvc, ["repro"], repo)
    v2 = {"rev": commit(repo, "data: spam v2", "data/spam/v2"), "files": data_files(repo),
          "registered": (repo / "models" / TASK / "registered.json").read_text(), "ran": stages_run(second.stdout)}
    assert v1["files"] != v2["files"]
    return repo, v1, v2


def test_editing_the_source_in_place_reruns_acquire_through_register(built):
    repo, v1, v2 = built
    assert v2["ran"] == {f"{stage}@{TASK}" for stage in PIPELINE}, v2["ran"]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    first, second = (json.loads(v["registered"]) for v in (v1, v2))
    md5s = [client.get_model_version(f"{TASK}-classifier", str(r["version"])).tags["data.md5"] for r in (first, second)]
    assert md5s[0] != md5s[1]
    assert md5s == [augmented_md5(v1["rev"], repo), augmented_md5(v2["rev"], repo)]
    # the edited source was versioned by that repro too: its .dvc file changed with the data
    assert run(["git", "diff", "--name-only", v1["rev"], v2["rev"]], repo).stdout.count(f"{SOURCE_DIR}.dvc") == 1


def augmented_md5(files_rev: str, repo: Path) -> str:
    lock = yaml.safe_load(run(["git", "show", f"{files_rev}:dvc.lock"], repo).stdout)
    return next(o["md5"] for o in lock["stages"][f"augment@{TASK}"]["outs"] if o["path"].endswith("augmented.parquet"))


def test_list_shows_each_version_with_hashes_rows_and_its_models(built):
    repo, v1, v2 = built
    listed = json.loads(timed("versions list", versions, repo, "list", TASK, "--json").stdout)
    assert [v["rev"] for v in listed] == [v1["rev"], v2["rev"]]
    assert [v["tags"] for v in listed] == [["data/spam/v1"], ["data/spam/v2"]]
    first, second = listed
    assert {"data/spam/raw.parquet", "data/spam/clean.parquet", "data/spam/labeled.parquet",
            "data/spam/split.parquet"} <= set(first["hashes"])
    assert first["rows"]["acquire"] == 80 and second["rows"]["acquire"] == 80 - 6 + 10
    assert set(first["rows"]) >= {"acquire", "clean", "label", "split"}
    assert [(m["name"], m["version"]) for m in first["models"]] == [("spam-classifier", "1")]
    assert [(m["name"], m["version"]) for m in second["models"]] == [("spam-classifier", "2")]
    assert first["models"][0]["data_md5"] == augmented_md5(v1["rev"], repo)
    assert second["current"] and not first["current"]

    text = versions(repo, "list", TASK).stdout
    assert "v1 " in text and "v2 " in text and "spam-classifier v1" in text and "data/spam/v1" in text


@pytest.mark.parametrize("which", ["v1", "v2"])
def test_checkout_restores_byte_identical_data_and_names_its_models(built, which):
    repo, v1, v2 = built
    version = {"v1": v1, "v2": v2}[which]
    out = timed(f"versions checkout {which}", versions, repo, "checkout", TASK, f"data/spam/{which}", "--json")
    result = json.loads(out.stdout)
    assert data_files(repo) == version["files"]
    assert (repo / "models" / TASK / "registered.json").read_text() == version["registered"]
    expected = "1" if which == "v1" else "2"
    assert [(m["name"], m["version"]) for m in result["models"]] == [("spam-classifier", expected)]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    mv = mlflow.MlflowClient().get_model_version("spam-classifier", expected)
    assert mv.tags["data.md5"] == augmented_md5(version["rev"], repo)
    status = dvc(["status", *[f"{s}@{TASK}" for s in ("acquire", "clean", "label", "split", "augment")]], repo)
    assert "up to date" in status.stdout, status.stdout


def test_model_prints_its_dataset_version_and_restore_command(built):
    repo, v1, _ = built
    info = json.loads(versions(repo, "model", "spam-classifier", "1", "--json").stdout)
    assert info["rev"] == v1["rev"]
    assert info["restore"] == f"python -m stages.versions checkout {TASK} {v1['rev']}"
    assert info["data_md5"] == augmented_md5(v1["rev"], repo)
    assert info["upstream_hashes"]["dvc.acquire.raw.parquet"] == info["hashes"]["data/spam/raw.parquet"]


def test_checkout_of_an_unknown_revision_is_one_line(built):
    repo, _, _ = built
    result = versions(repo, "checkout", TASK, "no-such-rev", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: no-such-rev: not a git revision"]


def test_push_wipe_cache_and_pull_restores(built):
    repo, _, v2 = built
    remote = (repo.parent / "dvc-remote").resolve()
    timed("dvc push (default remote)", dvc, ["push"], repo)
    assert remote.is_dir() and any((remote / "files" / "md5").iterdir())
    shutil.rmtree(repo / ".dvc" / "cache")
    for path in v2["files"]:
        (repo / path).unlink()
    timed("dvc pull after cache wipe", dvc, ["pull"], repo)
    assert data_files(repo) == v2["files"]
    assert "intact" in versions(repo, "verify").stdout


def test_verify_detects_a_corrupted_cache_file_and_pull_repairs_it(built):
    repo, _, v2 = built
    md5 = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][f"clean@{TASK}"]["outs"][0]["md5"]
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    cached.chmod(0o644)
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")  # same size, wrong bytes: dvc status stays silent
    result = timed("versions verify (corrupted)", versions, repo, "verify", check=False)
    assert result.returncode == 1
    assert f"corrupted: {cached}" in result.stdout
    assert "1 of" in result.stderr and "dvc pull" in result.stderr
    versions(repo, "verify", "--remove", check=False)
    assert not cached.exists()
    dvc(["pull"], repo)
    assert cached.exists() and versions(repo, "verify").returncode == 0


def test_report_timings(built):
    """Not an assertion: prints the round trip's timings (pytest -s) for the closing note."""
    with open(built[0].parent / "timings.json", "w") as fh:
        json.dump(TIMINGS, fh, indent=2)
    print("\nrollback round trip timings (s):", json.dumps(TIMINGS, indent=2))
