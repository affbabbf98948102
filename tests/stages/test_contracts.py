"""Code tests for stages/contracts.py: each kind of violation stops with one line naming column, row id and value."""

from __future__ import annotations

import pandas as pd
import pytest

from stages.common import StageError
from stages.contracts import CONTRACTS, check


def split_table() -> pd.DataFrame:
    return pd.DataFrame({
        "id": ["r1", "r2", "r3"], "modality": "text", "text": ["one", "two", "three"], "label": ["a", "b", "a"],
        "source": "s", "license": "MIT", "sha256": "x", "acquired_at": "2024-01-01T00:00:00+00:00",
        "content_hash": ["h1", "h2", "h3"], "cluster_id": ["r1", "r2", "r3"], "label_source": "source",
        "label_confidence": 1.0, "split": ["train", "val", "test"],
    })


def test_a_valid_table_passes_every_contract_up_to_its_stage():
    for stage in ("raw", "clean", "labeled", "split"):
        check(split_table(), stage, where="t.parquet", labels=["a", "b"])


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda f: f.drop(columns="content_hash"), r"t\.parquet: column 'content_hash' missing"),
        (lambda f: f.assign(label=["a", "zebra", "a"]), r"column 'label', row id r2: not in allowed values .*'zebra'"),
        (lambda f: f.assign(split=["train", "holdout", "test"]), r"column 'split', row id r2: .*'holdout'"),
        (lambda f: f.assign(text=["one", None, "three"]), r"column 'text', row id r2: null value"),
        (lambda f: f.assign(text=["one", "two", b"bytes"]), r"column 'text', row id r3: expected str, got bytes"),
        (lambda f: f.assign(label_confidence=[1.0, "high", 0.5]),
         r"column 'label_confidence', row id r2: expected float, got str .*'high'"),
        (lambda f: f.assign(id=["r1", "r1", "r3"]), r"column 'id', row id r1: duplicate id"),
        (lambda f: f.assign(id=["r1", None, "r3"]), r"column 'id', row 1 \(no id\): null value"),
        (lambda f: f.assign(image=[b"x"] * 3), r"exactly one payload column"),
    ],
    ids=["missing_column", "label_not_allowed", "bad_split", "null_payload", "wrong_dtype", "float_dtype",
         "duplicate_id", "null_id", "two_payloads"],
)
def test_violation_is_one_line_naming_column_row_and_value(mutate, pattern):
    with pytest.raises(StageError, match=pattern) as info:
        check(mutate(split_table()), "split", where="t.parquet", labels=["a", "b"])
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("t.parquet: ")


def test_raw_payload_may_be_null_but_not_after_clean():
    frame = split_table().assign(text=["one", None, "three"])
    check(frame, "raw", where="raw.parquet")
    with pytest.raises(StageError, match="column 'text', row id r2: null value"):
        check(frame, "clean", where="clean.parquet")


def test_long_values_are_shortened_to_keep_one_line():
    frame = split_table().assign(label=["a", "x" * 500, "a"])
    with pytest.raises(StageError) as info:
        check(frame, "labeled", where="t", labels=["a"])
    assert len(str(info.value)) < 250


def test_augmented_contract_needs_parent_id_and_flag():
    frame = split_table().assign(parent_id=[None, None, "r1"], augmented=[False, False, True])
    check(frame, "augmented", where="t")
    with pytest.raises(StageError, match="column 'augmented', row id r2: expected bool"):
        check(frame.assign(augmented=[False, "no", True]), "augmented", where="t")
    assert set(CONTRACTS) == {"raw", "clean", "labeled", "split", "augmented"}
