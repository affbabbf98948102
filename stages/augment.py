"""augment: add seeded augmented copies of train rows; val and test pass through unchanged.

Reads the split table. Writes all input rows byte-for-byte, plus `copies` augmented copies of each
train row with a new `id`, `parent_id` pointing at the original and `augmented=True`. `copies` is one number
for every modality or a mapping per modality (`{image: 1, text: 0}`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from stages.common import (
    StageError,
    build,
    content_id,
    load_params,
    read_parquet,
    run_main,
    stage_parser,
    task_params,
    write_json,
    write_parquet,
)
from stages.modalities import Modality, modality_section, task_modality
from stages.modalities.text_augment import protected_words


@dataclass(frozen=True)
class AugmentParams:
    copies: int | dict[str, int]
    by_modality: dict[str, dict[str, Any]]


def copies_for(copies: int | dict[str, int], modality: Modality) -> int:
    """The number of augmented copies per train row for `modality`; one line naming the key when it is bad."""
    value = modality_section(copies, modality, "augment.copies") if isinstance(copies, dict) else copies
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        key = f"augment.copies.{modality.name}" if isinstance(copies, dict) else "augment.copies"
        raise StageError(f"params.yaml: {key}: expected a whole number >= 0, got {value!r}")
    return value


def augment(frame: pd.DataFrame, modality: Modality, modality_params: Any, *, copies: int, seed: int,
            protected: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Return `frame` with `parent_id`/`augmented` columns plus augmented copies of its train rows.

    `protected` words (the task's label-rule keywords) are never replaced or introduced by an augmenter.
    """
    base = frame.assign(parent_id=pd.Series(None, index=frame.index, dtype="str"), augmented=False)
    train = base[base["split"] == "train"].sort_values("id", kind="stable")
    column = modality.payload_column
    extra = []
    for copy in range(copies):
        payloads = modality.augment(list(train[column]), modality_params, seed=seed + copy, protected=protected)
        rows = train.copy()
        rows[column] = payloads
        rows["parent_id"] = train["id"].to_numpy()
        rows["id"] = [content_id(pid, f"aug{copy}") for pid in train["id"]]
        rows["augmented"] = True
        rows["content_hash"] = [modality.content_hash(p) for p in payloads]
        extra.append(rows)
    return pd.concat([base, *extra], ignore_index=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)

    params = load_params()
    ap = build(AugmentParams, params.get("augment"), "augment")
    modality = task_modality(params, args.task)
    modality_params = modality.augment_params(modality_section(ap.by_modality, modality, "augment.by_modality"))
    copies = copies_for(ap.copies, modality)
    frame = read_parquet(args.inp)
    protected = protected_words(task_params(params, args.task).get("label_rules"))
    out = augment(frame, modality, modality_params, copies=copies, seed=params["base"]["seed"], protected=protected)
    from stages.contracts import check  # data contract at the augment -> train boundary
    check(out, "augmented", where=args.out)
    write_parquet(args.out, out)
    metrics = {
        "rows_in": len(frame),
        "rows_out": len(out),
        "rows_augmented": int(out["augmented"].sum()),
        "rows_per_split": {s: int((out["split"] == s).sum()) for s in ("train", "val", "test")},
    }
    write_json(args.metrics, metrics)
    print(f"augment {args.task}: {metrics}")


if __name__ == "__main__":
    run_main(main)
