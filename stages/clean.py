"""clean: normalise payloads, drop noise, exact and near duplicates, quarantine every dropped row.

Reads the acquire table. Writes the kept rows (payload normalised, `content_hash` and `cluster_id`
added), `quarantine.parquet` with each dropped row and its `quarantine_reason` (plus `duplicate_of`
for exact duplicates and `near_duplicate_of` for near duplicates), a metrics JSON with counts per
reason, duplicate clusters, class balance and payload summary numbers, and a quality report
(Markdown + PNG). Rows in = rows kept + rows quarantined, always.

Near duplicates (MinHash + LSH on char n-grams for text, pHash for images; see stages/dedup.py) form
clusters whose representative is the smallest id. `near_dedup: quarantine` drops the other members;
`mark` keeps them with `near_duplicate_of` set, and split keeps each cluster inside one split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

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
    write_json,
    write_parquet,
)
from stages.dedup import clusters as cluster_roots
from stages.engine import LOCAL, Engine, engine_params, open_engine
from stages.modalities import Modality, modality_section, task_modality

NEAR_DEDUP_MODES = ("quarantine", "mark", "off")


@dataclass(frozen=True)
class CleanParams:
    exact_dedup: bool
    near_dedup: str                  # quarantine | mark | off
    by_modality: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class CleanResult:
    kept: pd.DataFrame
    quarantine: pd.DataFrame
    metrics: dict[str, Any]


def clean(frame: pd.DataFrame, modality: Modality, modality_params: Any, *, exact_dedup: bool,
          near_dedup: str, engine: Engine = LOCAL) -> CleanResult:
    """Normalise each payload, quarantine invalid rows, exact and near duplicates (keeping the smallest id).

    `engine` runs the per-row work, the grouping by content hash and the near-duplicate pairs (this process,
    or Ray Data); which row wins and why is decided here, so the result does not depend on it.
    """
    if near_dedup not in NEAR_DEDUP_MODES:
        raise StageError(f"params.yaml: clean.near_dedup: {near_dedup!r} is not one of {list(NEAR_DEDUP_MODES)}")
    column = modality.payload_column
    frame = frame.reset_index(drop=True)
    reasons: list[str | None] = [None] * len(frame)
    duplicate_of: list[str | None] = [None] * len(frame)
    normalised: list[Any] = [None] * len(frame)
    # personal data is found (and redacted) before hashing, so a redacted copy of a kept row is its exact duplicate
    personal: dict[str, int] = {}
    rows_with_personal = 0
    redacted: dict[int, Any] = {}  # personal_data rows are quarantined redacted: raw personal data stays in raw

    seen_ids: set[str] = set()
    todo: list[int] = []
    for i, row_id in enumerate(frame["id"]):
        if row_id in seen_ids:
            reasons[i] = "duplicate_id"
            continue
        seen_ids.add(row_id)
        todo.append(i)
    payloads = list(frame[column])
    hashes: list[str | None] = [None] * len(frame)
    checked = engine.map_values(partial(_check_row, modality, modality_params), [payloads[i] for i in todo])
    for i, row in zip(todo, checked):
        normalised[i], reasons[i], hashes[i] = row.payload, row.reason, row.content_hash
        if row.personal:
            rows_with_personal += 1
            for kind, n in row.personal.items():
                personal[kind] = personal.get(kind, 0) + n
        if row.quarantined_redacted:
            redacted[i] = row.redacted

    clusters = 0
    conflicting = 0
    if exact_dedup:
        for members in engine.group_positions(hashes):
            clusters += 1
            keeper = min(members, key=lambda i: frame.at[i, "id"])
            if frame.loc[members, "label"].nunique(dropna=False) > 1:
                conflicting += 1
            for i in members:
                if i != keeper:
                    reasons[i], duplicate_of[i] = "exact_duplicate", frame.at[keeper, "id"]

    near_of: list[str | None] = [None] * len(frame)
    cluster_id: list[str | None] = [str(i) for i in frame["id"]]
    near = {"near_duplicate_clusters": 0, "near_duplicate_rows": 0, "near_duplicate_cluster_size_max": 0,
            "near_duplicate_clusters_with_conflicting_labels": 0}
    if near_dedup != "off":
        survivors = [i for i, r in enumerate(reasons) if r is None]
        near = _near_duplicates(frame, survivors, [normalised[i] for i in survivors], modality, modality_params,
                                near_of, cluster_id, engine)
        if near_dedup == "quarantine":
            for i in survivors:
                if near_of[i] is not None:
                    reasons[i] = "near_duplicate"

    dropped = [r is not None for r in reasons]
    keep_mask = pd.Series([not d for d in dropped])
    kept = frame[keep_mask].copy()
    kept[column] = [p for p, d in zip(normalised, dropped) if not d]
    kept["content_hash"] = [h for h, d in zip(hashes, dropped) if not d]
    kept["cluster_id"] = pd.Series([c for c, d in zip(cluster_id, dropped) if not d], index=kept.index, dtype="str")
    kept["near_duplicate_of"] = pd.Series([n for n, d in zip(near_of, dropped) if not d], index=kept.index,
                                          dtype="str")
    quarantine = frame[~keep_mask].copy()
    for i, scrubbed in redacted.items():
        quarantine.at[i, column] = scrubbed
    quarantine["quarantine_reason"] = [r for r in reasons if r is not None]
    quarantine["duplicate_of"] = pd.Series([d for d, r in zip(duplicate_of, reasons) if r is not None],
                                           index=quarantine.index, dtype="str")
    quarantine["near_duplicate_of"] = pd.Series([n for n, r in zip(near_of, reasons) if r is not None],
                                                index=quarantine.index, dtype="str")
    assert len(kept) + len(quarantine) == len(frame)

    metrics = {
        "rows_in": len(frame),
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        "quarantined_by_reason": quarantine_counts(quarantine),
        # personal data found, per kind (placeholders <EMAIL>, <PHONE>, ... in kept rows), and rows holding any
        "personal_data": {"rows": rows_with_personal, "by_kind": dict(sorted(personal.items()))},
        "exact_duplicate_clusters": clusters,
        "exact_duplicate_clusters_with_conflicting_labels": conflicting,
        **near,
        "class_balance": _class_balance(kept),
        "payload": modality.describe(list(kept[column])),
    }
    return CleanResult(kept.reset_index(drop=True), quarantine.reset_index(drop=True), metrics)


class RowCheck(NamedTuple):
    payload: Any                     # normalised (and redacted) payload; None when quarantined
    reason: str | None
    personal: dict[str, int]         # personal data found, per kind
    quarantined_redacted: bool       # quarantined for personal data: the quarantine gets `redacted`, not the raw row
    redacted: Any
    content_hash: str | None


def _check_row(modality: Modality, modality_params: Any, payload: Any) -> RowCheck:
    """One row's normalisation, personal-data check and content hash (a pure map: the engine may run it anywhere)."""
    normalised, reason = modality.normalise(payload, modality_params)
    if reason is not None:
        return RowCheck(normalised, reason, {}, False, None, None)
    scrubbed, found, reason = modality.personal_data(normalised, modality_params)
    if reason is not None:
        return RowCheck(None, reason, found, True, scrubbed, None)
    return RowCheck(scrubbed, None, found, False, None, modality.content_hash(scrubbed))


def _near_duplicates(frame: pd.DataFrame, rows: list[int], payloads: list[Any], modality: Modality,
                     modality_params: Any, near_of: list[str | None], cluster_id: list[str | None],
                     engine: Engine) -> dict[str, int]:
    """Fill `near_of` and `cluster_id` for `rows` in place; return the cluster metrics.

    The clusters are built here from the collected pair list (union-find over the surviving rows): memory
    O(survivors + verified pairs), a few dozen bytes each, whichever engine found the pairs.
    """
    ids = [str(frame.at[i, "id"]) for i in rows]
    pairs = engine.near_duplicate_pairs(modality, modality_params, payloads)
    roots = cluster_roots(ids, pairs)
    members: dict[int, list[int]] = {}
    for position, root in enumerate(roots):
        members.setdefault(root, []).append(position)
        cluster_id[rows[position]] = ids[root]
        if root != position:
            near_of[rows[position]] = ids[root]
    sizes = [len(m) for m in members.values() if len(m) > 1]
    conflicting = sum(1 for m in members.values()
                      if len(m) > 1 and frame.loc[[rows[p] for p in m], "label"].nunique(dropna=False) > 1)
    return {"near_duplicate_clusters": len(sizes), "near_duplicate_rows": sum(sizes) - len(sizes),
            "near_duplicate_cluster_size_max": max(sizes, default=0),
            "near_duplicate_clusters_with_conflicting_labels": conflicting}


def _class_balance(kept: pd.DataFrame) -> dict[str, Any]:
    counts = kept["label"].fillna("<unlabelled>").astype(str).value_counts()
    return {"per_label": {k: int(v) for k, v in counts.sort_index().items()},
            "min_over_max": round(float(counts.min() / counts.max()), 4) if len(counts) else 0.0}


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__, quarantine=True, report=True).parse_args(argv)

    params = load_params()
    cp = build(CleanParams, params.get("clean"), "clean")
    modality = task_modality(params, args.task)
    modality_values = modality_section(cp.by_modality, modality, "clean.by_modality")
    frame = read_parquet(args.inp)
    if modality.payload_column not in frame.columns:
        raise StageError(f"{args.inp}: column {modality.payload_column!r} missing for modality {modality.name!r}")
    with open_engine(engine_params(params)) as engine:
        result = clean(frame, modality, modality.clean_params(modality_values), exact_dedup=cp.exact_dedup,
                       near_dedup=cp.near_dedup, engine=engine)
    contracts.check(result.kept, "clean", where=args.out)
    write_parquet(args.quarantine, result.quarantine)
    write_parquet(args.out, result.kept)
    write_json(args.metrics, result.metrics)
    if args.report:
        quality.write_report(args.report, f"clean: {args.task}", result.metrics, quality.charts(result.metrics))
    print(f"clean {args.task}: kept {len(result.kept)}, quarantined {len(result.quarantine)} "
          f"{result.metrics['quarantined_by_reason']}")


if __name__ == "__main__":
    run_main(main)
