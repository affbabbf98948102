"""Code tests for stages/label.py: label_map, provenance columns, drop reasons and conservation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.common import StageError
from stages.label import LabelParams, label

PARAMS = LabelParams(labels=["business", "sport", "tech"], label_map={"sports": "sport", "footy": "football"})


def frame_of(labels: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(labels))], "text": [f"text {i}" for i in range(len(labels))],
                         "label": labels})


def assert_conserved(frame: pd.DataFrame, result) -> None:
    assert len(result.kept) + len(result.quarantine) == len(frame)
    assert sorted([*result.kept["id"], *result.quarantine["id"]]) == sorted(frame["id"])
    assert all(isinstance(r, str) and r for r in result.quarantine["quarantine_reason"])
    assert result.metrics["rows_in"] == len(frame)
    assert result.metrics["rows_kept"] == len(result.kept)
    assert result.metrics["rows_quarantined"] == len(result.quarantine)
    assert sum(result.metrics["quarantined_by_reason"].values()) == len(result.quarantine)


@pytest.mark.parametrize(
    ("bad_label", "reason"),
    [
        (None, "missing_label"),
        (np.nan, "missing_label"),
        (pd.NA, "missing_label"),
        ("weather", "label_not_in_set"),
        ("Sport", "label_not_in_set"),  # labels are case-sensitive
        ("footy", "label_not_in_set"),  # mapped, but the target is outside the set
    ],
    ids=["none", "nan", "pd_na", "unknown", "wrong_case", "mapped_outside_set"],
)
def test_drop_reason(bad_label, reason):
    frame = frame_of(["business", bad_label, "tech"])
    result = label(frame, PARAMS)
    assert_conserved(frame, result)
    assert list(result.quarantine["id"]) == ["r1"]
    assert list(result.quarantine["quarantine_reason"]) == [reason]
    assert result.metrics["quarantined_by_reason"] == {reason: 1}
    assert list(result.kept["id"]) == ["r0", "r2"]


def test_label_map_applied_and_source_label_kept():
    frame = frame_of(["sports", "sport", "tech", "footy"])
    result = label(frame, PARAMS)
    assert_conserved(frame, result)
    kept = result.kept.set_index("id")
    assert kept.loc["r0", "label"] == "sport"
    assert kept.loc["r0", "source_label"] == "sports"
    assert kept.loc["r1", "source_label"] == "sport"
    quarantined = result.quarantine.set_index("id")
    assert quarantined.loc["r3", "label"] == "football"
    assert quarantined.loc["r3", "source_label"] == "footy"
    assert result.metrics["per_label"] == {"business": 0, "sport": 2, "tech": 1}


def test_label_provenance_columns():
    frame = frame_of(["business", "sports", "weather"])
    result = label(frame, PARAMS)
    assert list(result.kept["label_source"]) == ["source", "source"]
    assert list(result.kept["label_confidence"]) == [1.0, 1.0]
    assert result.metrics["per_label_source"] == {"source": 2}
    # quarantined rows carry the same columns, so they can be relabelled and fed back
    assert {"label_source", "label_confidence", "source_label"} <= set(result.quarantine.columns)


def test_label_keeps_other_columns_and_does_not_mutate_input():
    frame = frame_of(["business", None]).assign(license="MIT")
    before = frame.copy()
    result = label(frame, PARAMS)
    pd.testing.assert_frame_equal(frame, before)
    assert list(result.kept["text"]) == ["text 0"]
    assert list(result.kept["license"]) == ["MIT"]
    assert list(result.quarantine["text"]) == ["text 1"]


def test_non_string_labels_are_compared_as_strings():
    params = LabelParams(labels=["0", "1"], label_map={"2": "1"})
    frame = frame_of([0, 1, 2, 3])
    result = label(frame, params)
    assert_conserved(frame, result)
    assert list(result.kept["label"]) == ["0", "1", "1"]
    assert list(result.quarantine["quarantine_reason"]) == ["label_not_in_set"]


def test_all_rows_quarantined():
    frame = frame_of([None, "weather"])
    result = label(frame, PARAMS)
    assert_conserved(frame, result)
    assert len(result.kept) == 0
    assert result.metrics["quarantined_by_reason"] == {"label_not_in_set": 1, "missing_label": 1}


def test_duplicate_labels_in_params_raise():
    with pytest.raises(StageError, match="duplicate"):
        label(frame_of(["a"]), LabelParams(labels=["a", "b", "a"], label_map={}))
