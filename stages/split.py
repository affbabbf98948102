"""split: leakage-free, seeded, deterministic train/val/test assignment.

Reads the labelled table. Writes the same rows with a `split` column, a quarantine of rows from
classes too small to appear in every split, metrics (per-split class counts, group and leakage
counts) and a quality report (Markdown + PNG).

Rows that must stay together form one group: rows of a near-duplicate cluster (`cluster_id` from
clean) and rows sharing a value of the user's `split.group_column` (e.g. author or source), merged
transitively. A group never straddles two splits. `split.mode` chooses how groups are assigned:

- `stratified`: per class (a group's majority label), a seeded permutation of groups filled into
  test, val, then train by row count, so each class keeps the declared ratios;
- `hash`: a group's split is a pure function of its key and the seed, so adding rows never moves an
  existing row (the key is the group value, else the cluster's representative id, else the row id);
- `time`: groups ordered by their newest `split.time_column` value: oldest to train, newest to test.

After assignment a leakage check looks for ids, exact content, near-duplicate clusters and groups in
two splits; any overlap stops the stage with one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from stages import contracts, quality
from stages.common import (
    StageError,
    build,
    load_params,
    quarantine_counts,
    read_parquet,
    run_main,
    stage_parser,
    task_params,
    write_json,
    write_parquet,
)
from stages.dedup import clusters
from stages.engine import LOCAL, Engine, engine_params, open_engine

SPLITS = ("train", "val", "test")
MODES = ("stratified", "hash", "time")


@dataclass(frozen=True)
class SplitParams:
    mode: str                        # stratified | hash | time
    val_ratio: float
    test_ratio: float
    group_column: str | None         # rows sharing a value stay in one split; null: no user groups
    time_column: str                 # used by mode `time`


@dataclass(frozen=True)
class SplitResult:
    kept: pd.DataFrame
    quarantine: pd.DataFrame
    metrics: dict


def split(frame: pd.DataFrame, params: SplitParams, *, seed: int, engine: Engine = LOCAL) -> SplitResult:
    """Assign every group of rows to one of train/val/test by `params.mode`, then check for leakage.

    Group keys, stratified and time modes work on the collected id/label/group columns; hash mode is a pure
    map of the keys, which `engine` runs (this process or Ray Data).
    """
    _validate(frame, params)
    frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
    keys = group_keys(frame, params.group_column)
    too_small: list[int] = []
    if params.mode == "stratified":
        assignment, too_small = _stratified(frame, keys, params, np.random.default_rng(seed))
    elif params.mode == "hash":
        assignment = pd.Series(engine.map_values(partial(hash_split, params=params, seed=seed), keys),
                               index=frame.index, dtype="object")
    else:
        assignment = _by_time(frame, keys, params)
    kept = frame.assign(split=assignment)[assignment.notna()].reset_index(drop=True)
    quarantine = frame.loc[too_small].assign(quarantine_reason="class_too_small_to_split").reset_index(drop=True)
    leaks = leakage(kept, params.group_column)
    _fail_on_leakage(kept, leaks, params.group_column)
    counts = {s: {str(k): int(v) for k, v in kept.loc[kept["split"] == s, "label"].value_counts().sort_index().items()}
              for s in SPLITS}
    group_sizes = pd.Series(keys).value_counts()
    metrics = {
        "rows_in": len(frame),
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        "quarantined_by_reason": quarantine_counts(quarantine),
        "rows_per_split": {s: int((kept["split"] == s).sum()) for s in SPLITS},
        "class_counts": counts,
        "class_balance": {"per_label": {str(k): int(v) for k, v in kept["label"].value_counts().sort_index().items()}},
        "ids_in_two_splits": int(kept["id"].duplicated().sum()),
        "groups": {"count": int(len(group_sizes)), "multi_row": int((group_sizes > 1).sum()),
                   "largest": int(group_sizes.max()) if len(group_sizes) else 0},
        "leakage": {name: len(values) for name, values in leaks.items()},
    }
    return SplitResult(kept, quarantine, metrics)


def _validate(frame: pd.DataFrame, params: SplitParams) -> None:
    if params.mode not in MODES:
        raise StageError(f"params.yaml: split.mode: {params.mode!r} is not one of {list(MODES)}")
    if not (0 < params.val_ratio < 1 and 0 < params.test_ratio < 1 and params.val_ratio + params.test_ratio < 1):
        raise StageError(f"params.yaml: split: val_ratio {params.val_ratio} and test_ratio {params.test_ratio} "
                         "must be in (0, 1) and sum to less than 1")
    for column in [params.group_column] if params.group_column else []:
        if column not in frame.columns:
            raise StageError(f"params.yaml: split.group_column: column {column!r} not in the table; "
                             f"columns: {list(frame.columns)}")
    if frame["id"].duplicated().any():
        dup = frame.loc[frame["id"].duplicated(), "id"].iloc[0]
        raise StageError(f"input: row id {dup}: field 'id': duplicate id")


# ---------------------------------------------------------------- groups


def group_keys(frame: pd.DataFrame, group_column: str | None) -> list[str]:
    """One key per row; rows that must share a split share a key.

    Rows are linked when they share a `cluster_id` (near duplicates from clean) or a non-null value of
    `group_column`; links are transitive. A group's key is the smallest of its members' own keys:
    `group:<value>` for rows with a group value, else `id:<cluster_id>` (the representative's id).
    """
    ids = [str(i) for i in frame["id"]]
    cluster = frame["cluster_id"] if "cluster_id" in frame.columns else frame["id"]
    # a cluster's id is its representative's row id, so a row that gains near duplicates keeps its key
    own = [f"id:{c}" if isinstance(c, str) and c else f"id:{i}" for c, i in zip(cluster, ids)]
    links = [_links(cluster)]
    if group_column:
        values = frame[group_column]
        own = [f"group:{v}" if isinstance(v, str) or pd.notna(v) else o for v, o in zip(values, own)]
        links.append(_links(values))
    roots = clusters(ids, np.concatenate(links))
    smallest: dict[int, str] = {}
    for root, key in zip(roots, own):
        if root not in smallest or key < smallest[root]:
            smallest[root] = key
    return [smallest[root] for root in roots]


def _links(values: pd.Series) -> np.ndarray:
    """Pairs of row positions with the same non-null value (a chain per value is enough for union-find)."""
    present = values.reset_index(drop=True).dropna()
    present = present[present.astype(str) != ""]
    if present.empty:
        return np.empty((0, 2), dtype=np.int64)
    ordered = present.astype(str).sort_values(kind="stable")
    positions = ordered.index.to_numpy()
    same = ordered.to_numpy()[1:] == ordered.to_numpy()[:-1]
    return np.stack([positions[:-1][same], positions[1:][same]], axis=1).astype(np.int64)


# ---------------------------------------------------------------- modes


def _stratified(frame: pd.DataFrame, keys: list[str], params: SplitParams,
                rng: np.random.Generator) -> tuple[pd.Series, list[int]]:
    """Per class, a seeded permutation of groups filled into test, then val, then train by row count.

    A group's class is its majority label (ties: the smallest). With one row per group this is the
    plain per-class stratified split: each class keeps its ratios to within a row.
    """
    table = pd.DataFrame({"key": keys, "label": frame["label"].astype(str).to_numpy()})
    majority = (table.groupby(["key", "label"]).size().reset_index(name="n")
                .sort_values(["key", "n", "label"], ascending=[True, False, True]).drop_duplicates("key"))
    stratum = dict(zip(majority["key"], majority["label"]))
    sizes = table["key"].value_counts()
    rows_of = table.groupby("key").indices
    assignment = pd.Series(None, index=frame.index, dtype="object")
    too_small: list[int] = []
    for lab in sorted(set(stratum.values())):
        groups = sorted(k for k, s in stratum.items() if s == lab)
        n = int(sum(sizes[g] for g in groups))
        if n < len(SPLITS):
            too_small.extend(i for g in groups for i in rows_of[g])
            continue
        groups = [groups[i] for i in rng.permutation(len(groups))]
        n_test = max(1, int(round(n * params.test_ratio)))
        n_val = max(1, int(round(n * params.val_ratio)))
        # every class keeps at least one row in each split, train included (exactly so for single rows)
        n_test = min(n_test, n - 2)
        n_val = min(n_val, n - 1 - n_test)
        filled = {"test": 0, "val": 0}
        for group in groups:
            target = "test" if filled["test"] < n_test else "val" if filled["val"] < n_val else "train"
            if target != "train":
                filled[target] += int(sizes[group])
            assignment[rows_of[group]] = target
    return assignment, sorted(too_small)


def hash_split(key: str, params: SplitParams, *, seed: int) -> str:
    """The split of a group key: a pure function of the key and the seed, never of other rows."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    if unit < params.test_ratio:
        return "test"
    if unit < params.test_ratio + params.val_ratio:
        return "val"
    return "train"


def _by_time(frame: pd.DataFrame, keys: list[str], params: SplitParams) -> pd.Series:
    """Groups by their newest timestamp (ties by key): the oldest fill train, then val, the newest test."""
    column = params.time_column
    if column not in frame.columns:
        raise StageError(f"params.yaml: split.time_column: column {column!r} not in the table; "
                         f"columns: {list(frame.columns)}")
    times = pd.to_datetime(frame[column], utc=True, errors="coerce", format="ISO8601")
    bad = times.isna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise StageError(f"input: column {column!r}, row id {frame.at[row, 'id']}: not a timestamp "
                         f"(value {frame.at[row, column]!r})")
    table = pd.DataFrame({"key": keys, "time": times})
    newest = table.groupby("key")["time"].max().reset_index().sort_values(["time", "key"], kind="stable")
    sizes = table["key"].value_counts()
    n = len(frame)
    train_end = n * (1 - params.val_ratio - params.test_ratio)
    val_end = n * (1 - params.test_ratio)
    target: dict[str, str] = {}
    done = 0
    for key in newest["key"]:
        target[key] = "train" if done < train_end else "val" if done < val_end else "test"
        done += int(sizes[key])
    return pd.Series([target[k] for k in keys], index=frame.index, dtype="object")


# ---------------------------------------------------------------- leakage


def leakage(kept: pd.DataFrame, group_column: str | None) -> dict[str, list[Any]]:
    """Values seen in more than one split: ids, exact content, near-duplicate clusters, user groups."""
    # every key always present (empty without a group column), so `dvc metrics diff` compares like with like
    checks = {"id": "id", "exact_duplicate": "content_hash", "near_duplicate": "cluster_id", "group": group_column}
    out: dict[str, list[Any]] = {}
    for name, column in checks.items():
        if column is None or column not in kept.columns:
            out[name] = []
            continue
        present = kept[[column, "split"]].dropna()
        spread = present.groupby(column)["split"].nunique()
        out[name] = sorted(spread.index[spread > 1].tolist(), key=str)
    # a kept near duplicate (clean's `near_dedup: mark`) must sit in the split of the row it duplicates
    if "near_duplicate_of" in kept.columns:
        split_of = dict(zip(kept["id"], kept["split"]))
        marked = kept.dropna(subset=["near_duplicate_of"])
        crossing = [r for r, s in zip(marked["near_duplicate_of"], marked["split"]) if split_of.get(r, s) != s]
        out["near_duplicate"] = sorted(set(out["near_duplicate"]) | set(crossing), key=str)
    return out


def _fail_on_leakage(kept: pd.DataFrame, leaks: dict[str, list[Any]], group_column: str | None) -> None:
    columns = {"id": "id", "exact_duplicate": "content_hash", "near_duplicate": "cluster_id", "group": group_column}
    for name, values in leaks.items():
        if values:
            column = columns[name] if columns[name] in kept.columns else "near_duplicate_of"
            splits = sorted(set(kept.loc[kept[column] == values[0], "split"]))
            raise StageError(f"split: leakage: {len(values)} {name} value(s) in two splits, e.g. column "
                             f"{column!r} value {values[0]!r} in {splits}")


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__, quarantine=True, report=True).parse_args(argv)

    params = load_params()
    task = task_params(params, args.task)
    # a task may set its own split keys (a spoken-word task groups by `voice`), merged over `split`
    sp = build(SplitParams, {**(params.get("split") or {}), **(task.get("split") or {})},
               f"split (with tasks.{args.task}.split)" if task.get("split") else "split")
    labels = task.get("labels")
    frame = read_parquet(args.inp)
    engine_spec = engine_params(params)
    # only hash mode maps over the engine; stratified and time work on the collected columns: no Ray to join
    with open_engine(engine_spec) if sp.mode == "hash" else nullcontext(LOCAL) as engine:
        result = split(frame, sp, seed=params["base"]["seed"], engine=engine)
    contracts.check(result.kept, "split", where=args.out, labels=labels)
    write_parquet(args.quarantine, result.quarantine)
    write_parquet(args.out, result.kept)
    write_json(args.metrics, result.metrics)
    if args.report:
        quality.write_report(args.report, f"split: {args.task}", result.metrics, quality.charts(result.metrics))
    print(f"split {args.task}: {result.metrics['rows_per_split']}, leakage {result.metrics['leakage']}")


if __name__ == "__main__":
    run_main(main)
