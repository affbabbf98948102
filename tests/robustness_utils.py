"""Helpers shared by the rollback, fault and bad-input tests (generated data only, no fixtures on disk)."""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

import yaml

from tests.pipeline_utils import edit_params, tiny_profile

DATA_STAGES = ("acquire", "clean", "label", "split", "augment")


def synthetic_sms(n_per_class: int, *, seed: int) -> list[dict[str, str]]:
    """Distinct ham and spam messages with a vocabulary that separates the classes, so a head learns fast."""
    rng = random.Random(seed)
    ham = "lunch meeting mum dinner bus class home tonight gym friday call later thanks sorry traffic keys".split()
    spam = "WIN free prize cash claim URGENT txt STOP bonus entry reply winner voucher award ringtone".split()
    rows = []
    for label, words in (("ham", ham), ("spam", spam)):
        for i in range(n_per_class):
            text = " ".join(rng.sample(words, 6)) + f" {rng.randrange(10**9)}"
            rows.append({"text": text, "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)


def create_input_dirs(repo: Path, tasks: list[str]) -> None:
    """Create the (empty) input folders dvc.yaml declares as deps but no stage writes, e.g. annotation folders."""
    dag = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    outs, deps = set(), set()
    for stage in dag.values():
        body = stage.get("do", stage)
        for task in tasks:
            def sub(value: str) -> str:
                return re.sub(r"\$\{item\}", task, value)

            for entry in body.get("outs") or []:
                outs.add(sub(entry if isinstance(entry, str) else next(iter(entry))))
            for entry in body.get("deps") or []:
                deps.add(sub(entry))
    for dep in sorted(deps - outs):
        path = repo / dep
        if dep.startswith("data/") and not path.exists() and not Path(dep).suffix:
            path.mkdir(parents=True)


def spam_profile(source_file: str | None = None):
    """tiny_profile with only the `spam` task, optionally reading a `table` source `data/spam/source/<source_file>`."""

    def edit(params: dict) -> None:
        tiny_profile(params)
        params["run"] = ["spam"]
        if source_file:
            params["tasks"]["spam"]["max_per_class"] = None
            params["tasks"]["spam"]["source"] = {"kind": "table", "file": source_file, "text_column": "text",
                                                 "label_column": "label", "license": "CC0-1.0"}

    return edit


def apply_spam_profile(repo: Path, source_file: str | None = None) -> None:
    edit_params(repo, spam_profile(source_file))
    create_input_dirs(repo, ["spam"])


def lock_outs(repo: Path, task: str, stages=DATA_STAGES) -> dict[str, str]:
    """`{path: md5}` of the task's outputs recorded in dvc.lock for `stages`."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    out = {}
    for stage in stages:
        for entry in lock["stages"].get(f"{stage}@{task}", {}).get("outs") or []:
            out[entry["path"]] = entry["md5"]
    return out


def data_files(repo: Path, task: str) -> dict[str, bytes]:
    """The bytes of every versioned data output (DVC-cached files under data/) of the task's data stages."""
    from stages.versions import uncached_outs

    uncached = uncached_outs(yaml.safe_load((repo / "dvc.yaml").read_text()), task)  # e.g. a local feature cache
    return {path: (repo / path).read_bytes() for path in lock_outs(repo, task)
            if path.startswith("data/") and path not in uncached and (repo / path).is_file()}


def cache_tracked_inputs(repo: Path) -> None:
    """Put the `.dvc`-tracked inputs a copy carries (e.g. annotation folders) into its cache, so push/pull see them."""
    from tests.pipeline_utils import dvc

    tracked = sorted(str(p.relative_to(repo)) for p in repo.glob("data/**/*.dvc"))
    if tracked:
        dvc(["commit", "-f", *tracked], repo)
