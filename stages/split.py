"""split: stratified, seeded, deterministic train/val/test assignment.

Reads the labelled table. Writes the same rows with a `split` column, a quarantine of rows from
classes too small to appear in every split, and metrics with per-split class counts.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stages.common import StageError, build, load_params, quarantine_counts, read_parquet, run_main, write_json, write_parquet

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitParams:
    val_ratio: float
    test_ratio: float


@dataclass(frozen=True)
class SplitResult:
    kept: pd.DataFrame
    quarantine: pd.DataFrame
    metrics: dict


def split(frame: pd.DataFrame, params: SplitParams, *, seed: int) -> SplitResult:
    """Assign each row to train/val/test per class, so every class keeps the declared ratios."""
    if not (0 < params.val_ratio < 1 and 0 < params.test_ratio < 1 and params.val_ratio + params.test_ratio < 1):
        raise StageError(f"params.yaml: split: val_ratio {params.val_ratio} and test_ratio {params.test_ratio} "
                         "must be in (0, 1) and sum to less than 1")
    if frame["id"].duplicated().any():
        dup = frame.loc[frame["id"].duplicated(), "id"].iloc[0]
        raise StageError(f"input: row id {dup}: field 'id': duplicate id")
    rng = np.random.default_rng(seed)
    frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
    assignment = pd.Series(None, index=frame.index, dtype="object")
    too_small = []
    for lab in sorted(frame["label"].unique()):
        index = frame.index[frame["label"] == lab].to_numpy()
        if len(index) < len(SPLITS):
            too_small.extend(index)
            continue
        index = rng.permutation(index)
        n_test = max(1, int(round(len(index) * params.test_ratio)))
        n_val = max(1, int(round(len(index) * params.val_ratio)))
        # every class keeps at least one row in each split, train included
        n_test = min(n_test, len(index) - 2)
        n_val = min(n_val, len(index) - 1 - n_test)
        assignment[index[:n_test]] = "test"
        assignment[index[n_test:n_test + n_val]] = "val"
        assignment[index[n_test + n_val:]] = "train"
    kept = frame.assign(split=assignment)[assignment.notna()].reset_index(drop=True)
    quarantine = frame.loc[too_small].assign(quarantine_reason="class_too_small_to_split").reset_index(drop=True)
    counts = {s: {str(k): int(v) for k, v in kept.loc[kept["split"] == s, "label"].value_counts().sort_index().items()}
              for s in SPLITS}
    metrics = {
        "rows_in": len(frame),
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        "quarantined_by_reason": quarantine_counts(quarantine),
        "rows_per_split": {s: int((kept["split"] == s).sum()) for s in SPLITS},
        "class_counts": counts,
        "ids_in_two_splits": int(kept["id"].duplicated().sum()),
    }
    return SplitResult(kept, quarantine, metrics)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quarantine", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params()
    sp = build(SplitParams, params.get("split"), "split")
    result = split(read_parquet(args.inp), sp, seed=params["base"]["seed"])
    write_parquet(args.quarantine, result.quarantine)
    write_parquet(args.out, result.kept)
    write_json(args.metrics, result.metrics)
    print(f"split {args.task}: {result.metrics['rows_per_split']}")


if __name__ == "__main__":
    run_main(main)
