"""`base.engine.kind: ray` builds the tiny profile with outputs identical to `local` (real DVC, local Ray, 2 CPUs).

One Ray instance is started in this test process for the whole module; the stages `dvc repro` runs join it by
its address (what a user does with an existing cluster), so no stage pays for starting Ray.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from stages.common import StageError
from stages.engine import EngineParams, open_engine
from stages.split import SplitParams, split
from tests.pipeline_utils import copy_repo, dvc, edit_params, run, stages_run, tiny_profile

pytestmark = pytest.mark.slow

TASKS = ("spam", "animals")
# what clean writes: identical bytes whatever the engine
OUTPUTS = [f"{kind}/{task}/{name}" for task in TASKS for kind, name in
           [("data", "clean.parquet"), ("data", "clean.quarantine.parquet"), ("metrics", "clean.json")]]


@pytest.fixture(scope="module")
def ray_engine():
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


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_engine):
    import ray

    repo = copy_repo(tmp_path_factory.mktemp("engine") / "repo")
    edit_params(repo, tiny_profile)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny profile"], repo)
    targets = [f"clean@{task}" for task in TASKS]
    dvc(["repro", *targets], repo)
    local = {name: md5(repo / name) for name in OUTPUTS}

    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline: local engine"], repo)
    # the switch as a DVC experiment: `dvc exp run -S` on the same targets
    address = ray.get_runtime_context().gcs_address
    second = dvc(["exp", "run", "-n", "on-ray", "-S", "base.engine.kind=ray", "-S", f"base.engine.address={address}",
                  *targets], repo)
    return repo, local, second


def test_ray_engine_reruns_clean_with_identical_outputs(built):
    repo, local, second = built
    assert stages_run(second.stdout) == {f"clean@{task}" for task in TASKS}
    assert {name: md5(repo / name) for name in OUTPUTS} == local
    clean = json.loads((repo / "metrics/spam/clean.json").read_text())
    assert clean["rows_kept"] > 0 and clean["rows_in"] == clean["rows_kept"] + clean["rows_quarantined"]


def test_dvc_exp_show_lists_the_experiment_with_its_metrics(built):
    repo, _, _ = built
    shown = json.loads(dvc(["exp", "show", "--json"], repo).stdout)
    experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])
                   for rev in exp["revs"] if rev.get("name") == "on-ray"]
    assert experiments, shown
    data = experiments[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["base"]["engine"]["kind"] == "ray"
    assert data["metrics"]["metrics/spam/clean.json"]["data"] == json.loads((repo / "metrics/spam/clean.json").read_text())


@pytest.mark.parametrize("task,modality", [("spam", "text"), ("animals", "image")])
def test_planted_near_duplicates_give_identical_clusters_and_splits(built, ray_engine, task, modality):
    from stages.clean import CleanParams, clean
    from stages.common import build, load_params
    from stages.modalities import get_modality, modality_section

    repo, _, _ = built
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
    repo, _, _ = built
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


def test_encoder_features_on_an_actor_pool_are_identical(built, ray_engine):
    """label's features under ray: one chunk per encoder batch on an actor pool, the local features to float tolerance."""
    import numpy as np

    from stages.common import load_params
    from stages.labeling.features import extract
    from stages.modalities import get_modality

    repo, _, _ = built
    spec = dict(load_params(repo / "params.yaml")["label"]["encoder"]["image"])
    images = list(pd.read_parquet(repo / "data/animals/clean.parquet")["image"][:40])
    local = extract(get_modality("image"), spec, images, batch_size=16)
    distributed = extract(get_modality("image"), spec, images, batch_size=16, engine=ray_engine)
    # equal up to float summation order: an actor's torch may run on fewer threads than this process
    assert local.shape == distributed.shape == (40, local.shape[1])
    np.testing.assert_allclose(distributed, local, rtol=1e-4, atol=1e-4)


def test_a_ray_worker_killed_mid_stage_completes_identically_or_fails_in_one_line(built, tmp_path):
    """kill -9 of a busy Ray worker while clean runs: Ray Data retries the task (same outputs as local), or the
    stage stops with one line and writes nothing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil
    import ray

    from tests.pipeline_utils import env

    repo, _, _ = built
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
    run(command("local"), repo)
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
