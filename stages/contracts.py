"""Data contracts checked at every stage boundary: columns, dtypes, allowed values, non-null and unique ids.

Each data stage checks the table it is about to write (`check(frame, "clean", where=args.out)`), so a
bad table never crosses a boundary. A violation stops the stage with one line that names the file,
the column, the row id and the bad value, e.g.

    error: data/news/labeled.parquet: column 'label', row id 3f2a...: value 'sports' not in allowed labels [...]

The contracts are plain data (like a pandera DataFrameSchema) but checked in a few vectorised passes,
because pandera's lazy error reports are multi-line tables, not the one line a user needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from stages.common import StageError

SPLITS = ("train", "val", "test")


def payload_columns() -> dict[str, type]:
    """Payload column -> Python type of its values, as the registered modalities declare them; a table has
    exactly one of them."""
    # the registry is plain data (a modality module imports only the layers below it), so asking it is no cycle
    from stages.modalities import registered

    return {m.payload_column: m.payload_type for m in registered()}


@dataclass(frozen=True)
class Column:
    kind: type                       # str, bytes, float, bool
    nullable: bool
    allowed: tuple[Any, ...] | None  # None: any value of the kind


def _col(kind: type, *, nullable: bool = False, allowed: tuple[Any, ...] | None = None) -> Column:
    return Column(kind, nullable, allowed)


_RAW = {
    "id": _col(str),
    "modality": _col(str),
    "label": _col(str, nullable=True),
    "source": _col(str),
    "license": _col(str),
    "sha256": _col(str),
    "acquired_at": _col(str),
}
_CLEAN = {**_RAW, "content_hash": _col(str), "cluster_id": _col(str)}
_LABELED = {**_CLEAN, "label": _col(str), "label_source": _col(str), "label_confidence": _col(float)}
_SPLIT = {**_LABELED, "split": _col(str, allowed=SPLITS)}
_AUGMENTED = {**_SPLIT, "parent_id": _col(str, nullable=True), "augmented": _col(bool)}

CONTRACTS: dict[str, dict[str, Column]] = {
    "raw": _RAW, "clean": _CLEAN, "labeled": _LABELED, "split": _SPLIT, "augmented": _AUGMENTED,
}
# a raw payload may still be broken (clean quarantines it); from clean on it must be a real payload
_PAYLOAD_NULLABLE = {"raw": True}


def check(frame: pd.DataFrame, stage: str, *, where: str, labels: Sequence[str] | None = None) -> None:
    """Raise a one-line StageError at the first contract violation of `frame` for `stage`'s boundary.

    `labels`, when given, restricts the `label` column to that set (from the label stage on).
    """
    if stage not in CONTRACTS:
        raise ValueError(f"unknown contract {stage!r}; known: {sorted(CONTRACTS)}")
    columns = dict(CONTRACTS[stage])
    if labels is not None and "label" in columns:
        columns["label"] = Column(columns["label"].kind, columns["label"].nullable, tuple(labels))
    known = payload_columns()
    payloads = [c for c in known if c in frame.columns]
    if len(payloads) != 1:
        raise StageError(f"{where}: expected exactly one payload column of {sorted(known)}, found {payloads}")
    columns[payloads[0]] = _col(known[payloads[0]], nullable=_PAYLOAD_NULLABLE.get(stage, False))

    for name in columns:
        if name not in frame.columns:
            raise StageError(f"{where}: column {name!r} missing; columns: {list(frame.columns)}")
    ids = frame["id"].reset_index(drop=True)
    for name, column in columns.items():
        _check_column(frame[name].reset_index(drop=True), name, column, ids, where)
    duplicated = ids.duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise StageError(f"{where}: column 'id', row id {ids[row]}: duplicate id (value {ids[row]!r})")


def _check_column(values: pd.Series, name: str, column: Column, ids: pd.Series, where: str) -> None:
    null = values.isna().to_numpy()
    if not column.nullable and null.any():
        _fail(where, name, ids, int(null.nonzero()[0][0]), values, "null value")
    present = values[~null]
    wrong = ~present.map(lambda v: _is_kind(v, column.kind)).to_numpy(dtype=bool)
    if wrong.any():
        row = int(present.index[wrong.nonzero()[0][0]])
        _fail(where, name, ids, row, values, f"expected {column.kind.__name__}, got {type(values[row]).__name__}")
    if column.allowed is not None:
        outside = ~present.isin(column.allowed).to_numpy()
        if outside.any():
            row = int(present.index[outside.nonzero()[0][0]])
            _fail(where, name, ids, row, values, f"not in allowed values {list(column.allowed)}")


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (float, int)) and not isinstance(value, bool)
    if kind is bytes:
        return isinstance(value, (bytes, bytearray))
    if kind is bool:
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    return isinstance(value, kind)


def _fail(where: str, name: str, ids: pd.Series, row: int, values: pd.Series, problem: str) -> None:
    row_id = ids[row]
    who = f"row id {row_id}" if isinstance(row_id, str) and row_id else f"row {row} (no id)"
    shown = repr(values[row])
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise StageError(f"{where}: column {name!r}, {who}: {problem} (value {shown})")
