"""Code tests for stages/split.py: stratified ratios, determinism, no leakage, too-small classes, bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from stages.common import StageError, content_id
from stages.split import SPLITS, SplitParams, split

PARAMS = SplitParams(val_ratio=0.15, test_ratio=0.15)


def frame_of(class_sizes: dict[str, int]) -> pd.DataFrame:
    rows = [{"id": content_id(lab, str(i)), "text": f"{lab} {i}", "label": lab}
            for lab, n in class_sizes.items() for i in range(n)]
    return pd.DataFrame(rows)


def assert_conserved(frame: pd.DataFrame, result) -> None:
    assert len(result.kept) + len(result.quarantine) == len(frame)
    assert sorted([*result.kept["id"], *result.quarantine["id"]]) == sorted(frame["id"])
    assert all(isinstance(r, str) and r for r in result.quarantine["quarantine_reason"])
    assert result.metrics["rows_in"] == len(frame)
    assert result.metrics["rows_kept"] == len(result.kept)
    assert sum(result.metrics["quarantined_by_reason"].values()) == len(result.quarantine)


def assignment(result) -> dict[str, str]:
    return dict(zip(result.kept["id"], result.kept["split"]))


@pytest.mark.parametrize("small_size", [1, 2])
def test_class_too_small_to_split_is_quarantined(small_size):
    frame = frame_of({"big": 20, "tiny": small_size})
    result = split(frame, PARAMS, seed=0)
    assert_conserved(frame, result)
    assert set(result.quarantine["label"]) == {"tiny"}
    assert len(result.quarantine) == small_size
    assert set(result.quarantine["quarantine_reason"]) == {"class_too_small_to_split"}
    assert result.metrics["quarantined_by_reason"] == {"class_too_small_to_split": small_size}
    assert "tiny" not in set(result.kept["label"])


def test_smallest_splittable_class_lands_in_every_split():
    frame = frame_of({"three": 3})
    result = split(frame, PARAMS, seed=0)
    assert_conserved(frame, result)
    assert sorted(result.kept["split"]) == ["test", "train", "val"]


def test_every_row_gets_a_split_and_columns_survive():
    frame = frame_of({"a": 10, "b": 7})
    result = split(frame, PARAMS, seed=1)
    assert_conserved(frame, result)
    assert set(result.kept["split"]) == set(SPLITS)
    assert set(frame.columns) | {"split"} == set(result.kept.columns)
    merged = result.kept.merge(frame, on="id", suffixes=("", "_in"))
    assert (merged["text"] == merged["text_in"]).all()
    assert (merged["label"] == merged["label_in"]).all()


def test_no_id_in_two_splits():
    frame = frame_of({"a": 30, "b": 11, "c": 4})
    result = split(frame, PARAMS, seed=3)
    assert not result.kept["id"].duplicated().any()
    by_split = {s: set(result.kept.loc[result.kept["split"] == s, "id"]) for s in SPLITS}
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    assert result.metrics["ids_in_two_splits"] == 0


@pytest.mark.parametrize(("val_ratio", "test_ratio"), [(0.15, 0.15), (0.2, 0.1), (0.1, 0.3), (0.25, 0.25)])
@pytest.mark.parametrize("seed", [0, 7])
def test_per_class_ratios_within_one_row(val_ratio, test_ratio, seed):
    # classes of 3 are forced to 1/1/1 (see test_smallest_splittable_class_lands_in_every_split)
    sizes = {"a": 20, "b": 37, "c": 100, "d": 9, "e": 5}
    frame = frame_of(sizes)
    result = split(frame, SplitParams(val_ratio=val_ratio, test_ratio=test_ratio), seed=seed)
    assert_conserved(frame, result)
    ratios = {"val": val_ratio, "test": test_ratio, "train": 1 - val_ratio - test_ratio}
    for lab, n in sizes.items():
        rows = result.kept[result.kept["label"] == lab]
        assert len(rows) == n
        for name, ratio in ratios.items():
            count = int((rows["split"] == name).sum())
            assert count >= 1, (lab, name)
            assert abs(count - ratio * n) <= 1 + 1e-9, (lab, name, count, ratio * n)
    counts = result.metrics["class_counts"]
    assert sum(sum(per_class.values()) for per_class in counts.values()) == len(frame)


def test_deterministic_for_a_seed_and_independent_of_row_order():
    frame = frame_of({"a": 25, "b": 13})
    first = split(frame, PARAMS, seed=42)
    again = split(frame, PARAMS, seed=42)
    shuffled = split(frame.sample(frac=1.0, random_state=1).reset_index(drop=True), PARAMS, seed=42)
    pd.testing.assert_frame_equal(first.kept, again.kept)
    assert assignment(first) == assignment(shuffled)


def test_another_seed_gives_another_assignment():
    frame = frame_of({"a": 40, "b": 40})
    assert assignment(split(frame, PARAMS, seed=1)) != assignment(split(frame, PARAMS, seed=2))


def test_duplicate_ids_raise_naming_the_id():
    frame = frame_of({"a": 5})
    frame.loc[3, "id"] = frame.loc[1, "id"]
    with pytest.raises(StageError, match=frame.loc[1, "id"]):
        split(frame, PARAMS, seed=0)


@pytest.mark.parametrize(
    ("val_ratio", "test_ratio"),
    [(0.0, 0.2), (0.2, 0.0), (-0.1, 0.2), (0.2, -0.1), (1.0, 0.1), (0.1, 1.0), (0.5, 0.5), (0.6, 0.5)],
)
def test_bad_ratios_raise(val_ratio, test_ratio):
    with pytest.raises(StageError, match="val_ratio"):
        split(frame_of({"a": 10}), SplitParams(val_ratio=val_ratio, test_ratio=test_ratio), seed=0)


def test_high_ratios_still_leave_a_train_row_per_class():
    frame = frame_of({"a": 4, "b": 20})
    result = split(frame, SplitParams(val_ratio=0.4, test_ratio=0.4), seed=0)
    assert_conserved(frame, result)
    rows = result.kept[result.kept["label"] == "a"]
    assert sorted(set(rows["split"])) == ["test", "train", "val"]
