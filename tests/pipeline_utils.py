"""Helpers to run the real pipeline in a throwaway copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
_SKIP = {".git", ".venv", ".cache", "data", "models", "metrics", "plots", "mlartifacts", "mlruns", ".pytest_cache",
         "__pycache__", "benchmarks", "tests"}


def copy_repo(dest: Path) -> Path:
    """Copy the code and pipeline definition (not data, models or stores) into `dest` and git-init it."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in REPO.iterdir():
        if item.name in _SKIP or item.name.startswith("mlflow.db") or item.name == "dvc.lock":
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp"))
        else:
            shutil.copy2(item, dest / item.name)
    for sub in ("data", "models"):
        (dest / sub).mkdir(exist_ok=True)
    # Acquire depends on data/<task>/source and label on data/<task>/annotations (git keeps the folders; files
    # in them are `dvc add`-ed): carry the folders, but no pipeline output.
    for folder in sorted([*REPO.glob("data/*/annotations"), *REPO.glob("data/*/source")]):
        shutil.copytree(folder, dest / "data" / folder.parent.name / folder.name)
    run(["git", "init", "-q"], dest)
    return dest


def env() -> dict[str, str]:
    out = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    out["PATH"] = bin_dir + os.pathsep + out.get("PATH", "")
    out.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    # mlflow.set_tracking_uri/set_registry_uri export these into os.environ (for subprocesses): a test that
    # configured MLflow in-process must not point every later pipeline at its store
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        out.pop(key, None)
    return out


def run(cmd: list[str], cwd: Path, *, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def dvc(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return run([str(Path(sys.executable).parent / "dvc"), *args], cwd, **kwargs)


def edit_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_profile(params: dict) -> None:
    """Small subsets and budgets: the whole pipeline in a couple of minutes on 2 cores."""
    params["run"] = ["spam", "animals"]
    params["tasks"]["spam"]["max_per_class"] = 40
    params["tasks"]["animals"]["max_per_class"] = 12
    params["train"]["n_trials"] = 3
    params["train"]["patience"] = 2
    params["train"]["pruner"].update(n_startup_trials=1, n_warmup_steps=1)
    params["train"]["model"]["image"]["image_size"] = 32
    params["train"]["model"]["text"].update(max_length=32, max_chunks=2)
    params["label"]["encoder"]["image"]["image_size"] = 32
    params["label"]["encoder"]["text"].update(max_length=32, max_chunks=2)  # train's spec: train reads label's features
    params["train"]["search"]["head"]["max_epochs"] = {"type": "int", "low": 3, "high": 6}
    params["train"]["search"]["scratch"]["max_epochs"] = {"type": "int", "low": 2, "high": 3}
    params["evaluate"]["baselines"]["small_cnn"]["epochs"] = 2
    # a dozen images per class make no model worth comparing: the gate's baseline rule is tested on its own
    params["register"]["min_margin_over_baseline"] = -1.0
    params["register"]["compressed"] = False  # tests/test_pipeline.py turns it on and checks it


def stages_run(output: str) -> set[str]:
    """Names of the stages `dvc repro` ran, from its output."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def versions(repo: Path, *args: str, check: bool = True):
    """`python -m stages.versions ...` in `repo`."""
    return run([sys.executable, "-m", "stages.versions", *args], repo, check=check)


def commit(repo: Path, message: str, tag: str | None = None) -> str:
    """`git add -A`, commit (and tag); the new commit's sha."""
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)
    if tag:
        run(["git", "tag", tag], repo)
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()

