"""Shared plumbing for stages: params loading, atomic writes, one-line errors.

Nothing here touches the world at import time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PARAMS_FILE = "params.yaml"


class StageError(Exception):
    """An error a user can fix; `run_main` prints it as one line and exits 2."""


# ---------------------------------------------------------------- params


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml as a dict, with a one-line error if it is missing or malformed."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            params = yaml.safe_load(fh)
    except FileNotFoundError:
        raise StageError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(params, dict):
        raise StageError(f"{path}: top level must be a mapping")
    return params


def build(cls: type[T], values: Any, where: str) -> T:
    """Build frozen dataclass `cls` from a mapping, recursing into nested dataclasses.

    Unknown or missing keys fail with the dotted key name, so a typo in params.yaml
    stops the stage at start-up rather than an hour into training.
    """
    if not dataclasses.is_dataclass(cls):
        return values
    if not isinstance(values, dict):
        raise StageError(f"params.yaml: {where}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise StageError(f"params.yaml: {where}.{unknown[0]}: unknown key; known: {sorted(fields)}")
    missing = [n for n in fields if n not in values]
    if missing:
        raise StageError(f"params.yaml: {where}.{missing[0]}: missing key")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in fields:
        hint = hints[name]
        sub = _dataclass_in(hint)
        value = values[name]
        if sub is not None and value is not None:
            value = build(sub, value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def section(params: dict[str, Any], key: str) -> Any:
    """Return `params[key]` for a dotted key, failing with the key's name."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise StageError(f"params.yaml: {key}: missing key")
        node = node[part]
    return node


def task_params(params: dict[str, Any], task: str) -> dict[str, Any]:
    """The `tasks.<task>` section, with a one-line error naming known tasks."""
    tasks = section(params, "tasks")
    if task not in tasks:
        raise StageError(f"params.yaml: tasks.{task}: unknown task; known: {sorted(tasks)}")
    return tasks[task]


# ---------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it onto `path` only if the block succeeds.

    A killed stage therefore never leaves a half-written output that DVC would adopt.
    Works for files and directories.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        if target.is_file():
            with target.open("rb") as fh:
                os.fsync(fh.fileno())
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_parquet(path: str | Path, frame: Any) -> None:
    # Fixed row-group size and no pandas index keep the bytes identical across reruns.
    with atomic_path(path) as tmp:
        frame.reset_index(drop=True).to_parquet(tmp, index=False, compression="zstd", row_group_size=4096)


def read_parquet(path: str | Path) -> Any:
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: input not found (run the upstream stage first: dvc repro)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise StageError(f"{path}: unreadable Parquet: {str(exc).splitlines()[0]}") from None


def file_md5(path: str | Path) -> str:
    """The md5 DVC records for a single file output in dvc.lock."""
    digest = hashlib.md5()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_id(*parts: str | bytes) -> str:
    """A stable 16-byte hex id from the given parts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def quarantine_counts(quarantine: Any) -> dict[str, int]:
    if len(quarantine) == 0:
        return {}
    return {str(k): int(v) for k, v in quarantine["quarantine_reason"].value_counts().sort_index().items()}


# ---------------------------------------------------------------- entry points


def stage_parser(doc: str, *, inp: bool = True, out: bool = True, quarantine: bool = False,
                 report: bool = False) -> Any:
    """The arguments a data stage takes: its task, then the paths dvc.yaml passes it."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("task")
    if inp:
        parser.add_argument("--in", dest="inp", required=True)
    if out:
        parser.add_argument("--out", required=True)
    if quarantine:
        parser.add_argument("--quarantine", required=True)
    parser.add_argument("--metrics", required=True)
    if report:
        parser.add_argument("--report", help="folder for the quality report (quality.md, quality.png)")
    return parser


def offline_env() -> None:
    """Stages never reach a model hub; set before transformers is imported."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's main; user errors print one line and exit 2, with no traceback wall."""
    offline_env()
    try:
        code = main(argv)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
