"""clean: normalise payloads, drop noise and exact duplicates, quarantine every dropped row.

Reads the acquire table. Writes the kept rows (payload normalised, `content_hash` added),
`quarantine.parquet` with each dropped row and its `quarantine_reason` (plus `duplicate_of`
for duplicates), and a metrics JSON with counts per reason.
Rows in = rows kept + rows quarantined, always.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from stages.common import (
    StageError,
    build,
    load_params,
    quarantine_counts,
    read_parquet,
    run_main,
    write_json,
    write_parquet,
)
from stages.modalities import Modality, task_modality


@dataclass(frozen=True)
class CleanParams:
    exact_dedup: bool
    by_modality: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class CleanResult:
    kept: pd.DataFrame
    quarantine: pd.DataFrame
    metrics: dict[str, Any]


def clean(frame: pd.DataFrame, modality: Modality, modality_params: Any, *, exact_dedup: bool) -> CleanResult:
    """Normalise each payload, quarantine invalid rows and exact duplicates (keeping the smallest id)."""
    column = modality.payload_column
    frame = frame.reset_index(drop=True)
    reasons: list[str | None] = [None] * len(frame)
    duplicate_of: list[str | None] = [None] * len(frame)
    normalised: list[Any] = [None] * len(frame)

    seen_ids: set[str] = set()
    for i, (row_id, payload) in enumerate(zip(frame["id"], frame[column])):
        if row_id in seen_ids:
            reasons[i] = "duplicate_id"
            continue
        seen_ids.add(row_id)
        normalised[i], reasons[i] = modality.normalise(payload, modality_params)

    hashes = [modality.content_hash(p) if r is None else None for p, r in zip(normalised, reasons)]
    clusters = 0
    conflicting = 0
    if exact_dedup:
        groups: dict[str, list[int]] = {}
        for i, digest in enumerate(hashes):
            if digest is not None:
                groups.setdefault(digest, []).append(i)
        for members in groups.values():
            if len(members) < 2:
                continue
            clusters += 1
            keeper = min(members, key=lambda i: frame.at[i, "id"])
            if frame.loc[members, "label"].nunique(dropna=False) > 1:
                conflicting += 1
            for i in members:
                if i != keeper:
                    reasons[i], duplicate_of[i] = "exact_duplicate", frame.at[keeper, "id"]

    dropped = [r is not None for r in reasons]
    keep_mask = pd.Series([not d for d in dropped])
    kept = frame[keep_mask].copy()
    kept[column] = [p for p, d in zip(normalised, dropped) if not d]
    kept["content_hash"] = [h for h, d in zip(hashes, dropped) if not d]
    quarantine = frame[~keep_mask].copy()
    quarantine["quarantine_reason"] = [r for r in reasons if r is not None]
    quarantine["duplicate_of"] = pd.Series([d for d, r in zip(duplicate_of, reasons) if r is not None],
                                           index=quarantine.index, dtype="str")
    assert len(kept) + len(quarantine) == len(frame)

    metrics = {
        "rows_in": len(frame),
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        "quarantined_by_reason": quarantine_counts(quarantine),
        "exact_duplicate_clusters": clusters,
        "exact_duplicate_clusters_with_conflicting_labels": conflicting,
        "payload": modality.describe(list(kept[column])),
    }
    return CleanResult(kept.reset_index(drop=True), quarantine.reset_index(drop=True), metrics)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quarantine", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params()
    cp = build(CleanParams, params.get("clean"), "clean")
    modality = task_modality(params, args.task)
    if modality.name not in cp.by_modality:
        raise StageError(f"params.yaml: clean.by_modality.{modality.name}: missing key")
    modality_values = cp.by_modality[modality.name]
    frame = read_parquet(args.inp)
    if modality.payload_column not in frame.columns:
        raise StageError(f"{args.inp}: column {modality.payload_column!r} missing for modality {modality.name!r}")
    result = clean(frame, modality, modality.clean_params(modality_values), exact_dedup=cp.exact_dedup)
    write_parquet(args.quarantine, result.quarantine)
    write_parquet(args.out, result.kept)
    write_json(args.metrics, result.metrics)
    print(f"clean {args.task}: kept {len(result.kept)}, quarantined {len(result.quarantine)} "
          f"{result.metrics['quarantined_by_reason']}")


if __name__ == "__main__":
    run_main(main)
