"""label: map source labels onto the task's declared label set and record label provenance.

Reads the clean table. Writes the labelled rows with `label`, `label_source` and
`label_confidence`, a quarantine of rows whose label is missing or outside the set, and metrics.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from stages.common import (
    StageError,
    build,
    load_params,
    quarantine_counts,
    read_parquet,
    run_main,
    task_params,
    write_json,
    write_parquet,
)


@dataclass(frozen=True)
class LabelParams:
    labels: list[str]
    label_map: dict[str, str]


@dataclass(frozen=True)
class LabelResult:
    kept: pd.DataFrame
    quarantine: pd.DataFrame
    metrics: dict


def label(frame: pd.DataFrame, params: LabelParams) -> LabelResult:
    """Apply `label_map`, then keep rows whose label is in `labels`; quarantine the rest with a reason."""
    if len(set(params.labels)) != len(params.labels):
        raise StageError(f"params.yaml: labels: duplicate entries in {params.labels}")
    def map_one(value: object) -> str | None:
        if value is None or pd.isna(value) or not str(value).strip():
            return None
        return params.label_map.get(str(value).strip(), str(value).strip())

    mapped = frame["label"].map(map_one)
    reason = pd.Series(None, index=frame.index, dtype="object")
    reason[mapped.isna()] = "missing_label"
    reason[mapped.notna() & ~mapped.isin(params.labels)] = "label_not_in_set"

    out = frame.copy()
    out["source_label"] = frame["label"]
    out["label"] = mapped
    out["label_source"] = "source"
    out["label_confidence"] = 1.0
    keep = reason.isna()
    kept = out[keep].reset_index(drop=True)
    quarantine = out[~keep].copy()
    quarantine["quarantine_reason"] = reason[~keep]
    quarantine = quarantine.reset_index(drop=True)
    metrics = {
        "rows_in": len(frame),
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        "quarantined_by_reason": quarantine_counts(quarantine),
        "per_label": {lab: int((kept["label"] == lab).sum()) for lab in params.labels},
        "per_label_source": {str(k): int(v) for k, v in kept["label_source"].value_counts().sort_index().items()},
    }
    return LabelResult(kept, quarantine, metrics)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quarantine", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    task = task_params(load_params(), args.task)
    lp = build(LabelParams, {k: task.get(k) for k in ("labels", "label_map")}, f"tasks.{args.task}")
    frame = read_parquet(args.inp)
    if "label" not in frame.columns:
        raise StageError(f"{args.inp}: column 'label' not found; columns: {list(frame.columns)}")
    result = label(frame, lp)
    write_parquet(args.quarantine, result.quarantine)
    write_parquet(args.out, result.kept)
    write_json(args.metrics, result.metrics)
    print(f"label {args.task}: kept {len(result.kept)}, quarantined {result.metrics['quarantined_by_reason']}")


if __name__ == "__main__":
    run_main(main)
