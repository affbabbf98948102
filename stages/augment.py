"""augment: add seeded augmented copies of train rows; val and test pass through unchanged.

Reads the split table. Writes all input rows byte-for-byte, plus `copies` augmented copies of each
train row with a new `id`, `parent_id` pointing at the original and `augmented=True`. `copies` is one number
for every modality or a mapping per modality (`{image: 1, text: 0}`).

`base.engine` chooses where the copies are made. The random draws are always made here, in one seeded stream
over the train rows in id order (`modality.augment_draws`); the transforms that apply them are a map
(`modality.augment_one`, a `map_batches` on Ray), so the copies are the same with both engines. A modality
whose augmenter cannot draw apart from transforming (its `augment_draws` is None) makes its copies here.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
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
from stages.engine import LOCAL, Engine, engine_params, open_engine
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
            protected: frozenset[str] = frozenset(), engine: Engine = LOCAL) -> pd.DataFrame:
    """Return `frame` with `parent_id`/`augmented` columns plus augmented copies of its train rows.

    `protected` words (the task's label-rule keywords) are never replaced or introduced by an augmenter.
    `engine` applies the draws (this process or Ray Data); the copies do not depend on it.
    """
    base = frame.assign(parent_id=pd.Series(None, index=frame.index, dtype="str"), augmented=False)
    train = base[base["split"] == "train"].sort_values("id", kind="stable")
    column = modality.payload_column
    extra = []
    for copy in range(copies):
        payloads, hashes = augmented_copy(list(train[column]), modality, modality_params, seed=seed + copy,
                                          protected=protected, engine=engine)
        rows = train.copy()
        rows[column] = payloads
        rows["parent_id"] = train["id"].to_numpy()
        rows["id"] = [content_id(pid, f"aug{copy}") for pid in train["id"]]
        rows["augmented"] = True
        rows["content_hash"] = hashes
        extra.append(rows)
    return pd.concat([base, *extra], ignore_index=True)


def augmented_copy(payloads: list[Any], modality: Modality, modality_params: Any, *, seed: int,
                   protected: frozenset[str], engine: Engine) -> tuple[list[Any], list[str]]:
    """One augmented copy of each payload and the copies' content hashes.

    The draws come from one stream in the payloads' order, here; `engine` maps them onto the payloads.
    """
    draws = modality.augment_draws(payloads, modality_params, seed=seed, protected=protected)
    if draws is None:
        copied = modality.augment(payloads, modality_params, seed=seed, protected=protected)
        return copied, [modality.content_hash(p) for p in copied]
    made = engine.map_values(partial(_augment_row, modality, modality_params), list(zip(payloads, draws)))
    return [payload for payload, _ in made], [content_hash for _, content_hash in made]


def _augment_row(modality: Modality, modality_params: Any, payload_and_draw: tuple[Any, Any]) -> tuple[Any, str]:
    """One row's copy and its content hash (a pure map: the engine may run it anywhere)."""
    payload, draw = payload_and_draw
    copied = modality.augment_one(payload, draw, modality_params)
    return copied, modality.content_hash(copied)


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__).parse_args(argv)

    params = load_params()
    ap = build(AugmentParams, params.get("augment"), "augment")
    modality = task_modality(params, args.task)
    modality_params = modality.augment_params(modality_section(ap.by_modality, modality, "augment.by_modality"))
    copies = copies_for(ap.copies, modality)
    frame = read_parquet(args.inp)
    protected = protected_words(task_params(params, args.task).get("label_rules"))
    engine_spec = engine_params(params)
    # an empty list shows whether this modality's draws can be made apart from its transforms
    on_engine = bool(copies) and modality.augment_draws([], modality_params, seed=0) is not None
    if engine_spec.kind != "local" and not on_engine and copies:
        print(f"augment {args.task}: {modality.name} augmentation draws as it transforms; copies made in this "
              f"process, not on {engine_spec.kind}")
    with open_engine(engine_spec) if on_engine else nullcontext(LOCAL) as engine:
        out = augment(frame, modality, modality_params, copies=copies, seed=params["base"]["seed"],
                      protected=protected, engine=engine)
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
