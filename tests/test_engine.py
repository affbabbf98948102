"""`base.engine.kind: ray` builds the tiny profile with outputs identical to `local` (real DVC, local Ray, 2 CPUs).

One Ray instance is started in this test process for the whole module; the stages `dvc repro` runs join it by
its address (what a user does with an existing cluster), so no stage pays for starting Ray. The module builds the
data stages the engine runs (clean, label, split, augment) once locally, then once more as a `dvc exp run` on
Ray, and every test reads that one build.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.common import StageError
from stages.engine import EngineParams, open_engine
from stages.split import SplitParams, split
from tests.pipeline_utils import copy_repo, dvc, edit_params, run, stages_run, tiny_profile

pytestmark = pytest.mark.slow

TASKS = ("spam", "animals")
ENGINE_STAGES = ("clean", "label", "split", "augment")  # the stages that list base.engine in dvc.yaml


def stage_outputs(repo) -> list[str]:
    """Every file the engine's stages write for the tasks (outs and metrics, folders expanded), from dvc.yaml."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in ENGINE_STAGES:
        spec = stages[stage]["do"]
        assert "base.engine" in spec["params"], f"{stage} does not list base.engine"
        for entry in [*spec.get("outs", []), *spec.get("metrics", [])]:
            path = entry if isinstance(entry, str) else next(iter(entry))
            paths += [path.replace("${item}", task) for task in TASKS]
    files = []
    for path in paths:
        target = repo / path
        files += sorted(str(f.relative_to(repo)) for f in target.rglob("*") if f.is_file()) if target.is_dir() else [path]
    return files


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread in the stages and in the Ray workers: encoder features are bit-identical across the
    engines at equal thread counts (with 2 threads in the driver they differ in the 6th digit: summation order)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def ray_engine(one_thread):
    with open_engine(EngineParams(kind="ray", address=None, num_cpus=2)) as engine:
        yield engine


def nudged(payload):
    """The payload with one small edit: two characters for text, one pixel for an image."""
    if isinstance(payload, str):
        return payload + " x"
    import io

    from PIL import Image

    with Image.open(io.BytesIO(payload)) as image:
        image = image.convert("L")
        image.putpixel((0, 0), 255 - image.getpixel((0, 0)))
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def feature_store(repo) -> dict[str, dict[str, bytes]]:
    """label's feature store, array by array (an .npz is a zip whose entries carry the time they were written)."""
    import numpy as np

    out = {}
    for path in sorted((repo / ".cache" / "features").glob("*.npz")):
        with np.load(path, allow_pickle=False) as arrays:
            out[path.name] = {key: arrays[key].tobytes() + str(arrays[key].dtype).encode() for key in arrays.files}
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_thread, request):
    """The tiny profile through augment with `local`, then `dvc exp run -S base.engine.kind=ray` on the same targets:
    (repo, md5 of every engine-stage output after the local build, label's features, the experiment's output)."""
    import subprocess

    import ray

    from tests.pipeline_utils import env

    repo = copy_repo(tmp_path_factory.mktemp("engine") / "repo")
    edit_params(repo, tiny_profile)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny profile"], repo)
    targets = [f"augment@{task}" for task in TASKS]  # with their upstream: acquire, clean, label, split
    repro = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", *targets], cwd=repo, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        request.getfixturevalue("ray_engine")  # Ray starts while the local build runs
        output, _ = repro.communicate(timeout=1200)
    finally:
        if repro.poll() is None:
            repro.kill()
    assert repro.returncode == 0, output[-4000:]
    local = {name: md5(repo / name) for name in stage_outputs(repo)}
    features = feature_store(repo)

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline: local engine"], repo)
    # label would read every row's features from the store the local run filled; without it the encoder runs on Ray
    shutil.rmtree(repo / ".cache" / "features")
    # the switch as a DVC experiment: `dvc exp run -S` on the same targets
    address = ray.get_runtime_context().gcs_address
    second = dvc(["exp", "run", "-n", "on-ray", "-S", "base.engine.kind=ray", "-S", f"base.engine.address={address}",
                  *targets], repo)
    return repo, local, features, second


def test_ray_engine_reruns_the_data_stages_with_identical_outputs(built):
    """Every file clean, label, split and augment write (data, quarantine, review queue, reports, metrics) is
    byte-identical under ray; acquire, which has no engine, is not rerun."""
    repo, local, features, second = built
    assert stages_run(second.stdout) == {f"{stage}@{task}" for stage in ENGINE_STAGES for task in TASKS}
    assert "augment animals" in second.stdout and "copies made in this process" not in second.stdout
    assert len(local) >= 2 * 14, sorted(local)
    assert {name: md5(repo / name) for name in stage_outputs(repo)} == local
    # the encoder features label computed on the actor pool (one per task) equal the local ones bit for bit
    assert len(features) == len(TASKS) and feature_store(repo) == features
    clean = json.loads((repo / "metrics/spam/clean.json").read_text())
    assert clean["rows_kept"] > 0 and clean["rows_in"] == clean["rows_kept"] + clean["rows_quarantined"]
    augmented = json.loads((repo / "metrics/animals/augment.json").read_text())
    assert augmented["rows_augmented"] == augmented["rows_per_split"]["train"] // 2 > 0


def test_dvc_exp_show_lists_the_experiment_with_its_metrics(built):
    repo, *_ = built
    shown = json.loads(dvc(["exp", "show", "--json"], repo).stdout)
    experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])
                   for rev in exp["revs"] if rev.get("name") == "on-ray"]
    assert experiments, shown
    data = experiments[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["base"]["engine"]["kind"] == "ray"
    for stage in ENGINE_STAGES:
        path = f"metrics/spam/{stage}.json"
        written = json.loads((repo / path).read_text())
        # exp show leaves out nulls and empty sections; every number and string is there
        scalars = {key: value for key, value in written.items() if isinstance(value, (int, float, str))}
        assert scalars and scalars.items() <= data["metrics"][path]["data"].items(), path


@pytest.mark.parametrize("task,modality", [("spam", "text"), ("animals", "image")])
def test_planted_near_duplicates_give_identical_clusters_and_splits(built, ray_engine, task, modality):
    from stages.clean import CleanParams, clean
    from stages.common import build, load_params
    from stages.modalities import get_modality, modality_section

    repo, *_ = built
    params = load_params(repo / "params.yaml")
    cp = build(CleanParams, params["clean"], "clean")
    raw = pd.read_parquet(repo / f"data/{task}/raw.parquet")
    # every fourth row again with a small edit, so near-duplicate clusters form (and `mark` keeps them)
    planted = raw.iloc[::4].copy()
    planted["id"] = planted["id"] + "-near"
    mod = get_modality(modality)
    planted[mod.payload_column] = [nudged(p) for p in planted[mod.payload_column]]
    frame = pd.concat([raw, planted], ignore_index=True)
    values = mod.clean_params(modality_section(cp.by_modality, mod, "clean.by_modality"))
    local = clean(frame, mod, values, exact_dedup=True, near_dedup="mark")
    distributed = clean(frame, mod, values, exact_dedup=True, near_dedup="mark", engine=ray_engine)
    pd.testing.assert_frame_equal(local.kept, distributed.kept)
    pd.testing.assert_frame_equal(local.quarantine, distributed.quarantine)
    assert local.metrics == distributed.metrics
    assert local.metrics["near_duplicate_clusters"] > 0

    for mode in ("stratified", "hash"):
        sp = SplitParams(mode=mode, val_ratio=0.15, test_ratio=0.15, group_column=None, time_column="acquired_at")
        expected = split(local.kept, sp, seed=42)
        got = split(local.kept, sp, seed=42, engine=ray_engine)
        pd.testing.assert_frame_equal(expected.kept, got.kept)
        assert expected.metrics == got.metrics


def test_unreachable_address_fails_with_one_line_naming_it(built):
    repo, *_ = built
    edit_params(repo, lambda p: p["base"]["engine"].update(kind="ray", address="127.0.0.1:9"))
    result = run(["python", "-m", "stages.clean", "spam", "--in", "data/spam/raw.parquet", "--out", "x.parquet",
                  "--quarantine", "q.parquet", "--metrics", "m.json"], repo, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: base.engine.address: no Ray cluster reachable at '127.0.0.1:9' (Connection refused)"]
    assert not (repo / "x.parquet").exists() and not (repo / "m.json").exists()


def test_unknown_engine_kind_names_the_known_ones():
    with pytest.raises(StageError, match=r"base.engine.kind: 'spark' is not one of \['local', 'ray'\]"):
        with open_engine(EngineParams(kind="spark", address=None, num_cpus=None)):
            pass


def test_a_ray_worker_killed_mid_stage_completes_identically_or_fails_in_one_line(built, tmp_path):
    """kill -9 of a busy Ray worker while clean runs: Ray Data retries the task (same outputs as local), or the
    stage stops with one line and writes nothing."""
    import os
    import signal
    import subprocess
    import time

    import psutil
    import ray

    from tests.pipeline_utils import env

    repo, *_ = built
    import random

    raw = pd.read_parquet(repo / "data/spam/raw.parquet")
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(3000)]
    # 10k distinct random-word texts: seconds of work for clean, so the kill lands while workers are busy
    big = pd.DataFrame([raw.iloc[i % len(raw)] for i in range(10_000)]).reset_index(drop=True)
    big["id"] = [f"{i:06d}" for i in range(len(big))]
    big["text"] = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(len(big))]
    big.to_parquet(tmp_path / "raw.parquet", index=False)

    def command(name: str) -> list[str]:
        return [sys.executable, "-m", "stages.clean", "spam", "--in", str(tmp_path / "raw.parquet"),
                "--out", str(tmp_path / f"{name}.parquet"), "--quarantine", str(tmp_path / f"{name}.q.parquet"),
                "--metrics", str(tmp_path / f"{name}.json")]

    edit_params(repo, lambda p: p["base"]["engine"].update(kind="local", address=None))
    with pytest.MonkeyPatch.context() as patch:  # the reference in this process: no interpreter start-up
        from stages.clean import main as clean_main

        patch.chdir(repo)
        clean_main(command("local")[3:])
    edit_params(repo, lambda p: p["base"]["engine"].update(kind="ray", address=ray.get_runtime_context().gcs_address))
    stage = subprocess.Popen(command("ray"), cwd=repo, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and stage.poll() is None and time.monotonic() < deadline:
        for child in psutil.Process().children(recursive=True):  # this module's Ray instance: its workers
            try:
                title = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::MapBatches"):
                os.kill(child.pid, signal.SIGKILL)
                killed = title
                break
        time.sleep(0.02)
    _, err = stage.communicate(timeout=300)
    assert killed, "no busy Ray worker was seen"
    print(f"killed {killed.split()[0]}: stage exit {stage.returncode}")
    if stage.returncode == 0:
        for suffix in (".parquet", ".q.parquet", ".json"):
            assert md5(tmp_path / f"ray{suffix}") == md5(tmp_path / f"local{suffix}"), suffix
    else:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ray: "), err
        assert not any((tmp_path / f"ray{suffix}").exists() for suffix in (".parquet", ".q.parquet", ".json"))
