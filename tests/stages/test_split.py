"""Code tests for stages/split.py: stratified ratios, determinism, no leakage, too-small classes, bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from stages.common import StageError, content_id
from stages.split import SPLITS, SplitParams, split


def params(**changes) -> SplitParams:
    values = {"mode": "stratified", "val_ratio": 0.15, "test_ratio": 0.15, "group_column": None,
              "time_column": "acquired_at"}
    return SplitParams(**{**values, **changes})


PARAMS = params()


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
    result = split(frame, params(val_ratio=val_ratio, test_ratio=test_ratio), seed=seed)
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
        split(frame_of({"a": 10}), params(val_ratio=val_ratio, test_ratio=test_ratio), seed=0)


def test_high_ratios_still_leave_a_train_row_per_class():
    frame = frame_of({"a": 4, "b": 20})
    result = split(frame, params(val_ratio=0.4, test_ratio=0.4), seed=0)
    assert_conserved(frame, result)
    rows = result.kept[result.kept["label"] == "a"]
    assert sorted(set(rows["split"])) == ["test", "train", "val"]


# ---------------------------------------------------------------- groups, clusters, modes, leakage

from stages.split import group_keys, hash_split, leakage  # noqa: E402


def grouped_frame(n: int = 120) -> pd.DataFrame:
    """Rows with planted near-duplicate clusters (via cluster_id) and author groups, over two classes."""
    rows = []
    for i in range(n):
        row_id = content_id("row", str(i))
        rows.append({"id": row_id, "text": f"text {i}", "label": "a" if i % 3 else "b",
                     "content_hash": content_id("hash", str(i)), "cluster_id": row_id,
                     "author": f"author{i % 17}" if i % 4 == 0 else None,
                     "acquired_at": f"2024-01-{1 + i % 28:02d}T00:00:00+00:00"})
    frame = pd.DataFrame(rows)
    # clusters of 2-4 near duplicates: members carry the representative's id as cluster_id
    for start in range(1, n - 4, 9):
        frame.loc[start + 1:start + 1 + start % 3, "cluster_id"] = frame.at[start, "id"]
    return frame


def assert_no_straddling(kept: pd.DataFrame, column: str) -> None:
    spread = kept.dropna(subset=[column]).groupby(column)["split"].nunique()
    assert (spread == 1).all(), spread[spread > 1]


@pytest.mark.parametrize("mode", ["stratified", "hash", "time"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clusters_and_groups_never_straddle_splits(mode, seed):
    frame = grouped_frame()
    assert frame["cluster_id"].duplicated().sum() > 10 and frame["author"].notna().sum() > 10
    result = split(frame, params(mode=mode, group_column="author"), seed=seed)
    assert_conserved(frame, result)
    assert_no_straddling(result.kept, "cluster_id")
    assert_no_straddling(result.kept, "author")
    assert set(result.kept["split"]) == set(SPLITS)
    assert result.metrics["leakage"] == {"id": 0, "exact_duplicate": 0, "near_duplicate": 0, "group": 0}
    assert result.metrics["groups"]["multi_row"] > 0


def test_groups_are_transitive_across_cluster_and_group_column():
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "cluster_id": ["a", "a", "c", "d"],
                          "author": [None, "x", "x", None], "label": "l"})
    keys = group_keys(frame, "author")
    assert keys[0] == keys[1] == keys[2] != keys[3]


def test_grouped_stratified_split_stays_near_the_ratios():
    frame = grouped_frame(600)
    result = split(frame, params(group_column="author"), seed=0)
    share = result.kept["split"].value_counts(normalize=True)
    assert abs(share["test"] - 0.15) < 0.05 and abs(share["val"] - 0.15) < 0.05


def test_hash_split_never_moves_existing_rows_when_rows_are_added():
    old = frame_of({"a": 40, "b": 25})
    new_rows = frame_of({"a": 30, "b": 30, "c": 20}).assign(id=lambda f: [content_id("new", i) for i in f["id"]])
    hash_params = params(mode="hash")
    before = assignment(split(old, hash_params, seed=5))
    after = assignment(split(pd.concat([new_rows, old], ignore_index=True), hash_params, seed=5))
    assert len(after) == len(old) + len(new_rows)
    assert {i: after[i] for i in before} == before
    # and it is a pure function of the id and the seed
    assert all(before[i] == hash_split(f"id:{i}", hash_params, seed=5) for i in before)
    assert before != assignment(split(old, hash_params, seed=6))


def test_hash_split_of_a_group_depends_only_on_the_group_value():
    frame = grouped_frame().assign(cluster_id=lambda f: f["id"])  # no clusters bridging two authors
    hash_params = params(mode="hash", group_column="author")
    result = split(frame, hash_params, seed=3)
    authored = result.kept.dropna(subset=["author"])
    assert all(s == hash_split(f"group:{a}", hash_params, seed=3) for a, s in zip(authored["author"], authored["split"]))


def test_time_split_puts_the_newest_rows_in_test():
    frame = frame_of({"a": 50, "b": 50}).assign(
        acquired_at=[f"2024-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}T00:00:00Z" for i in range(100)])
    result = split(frame, params(mode="time"), seed=0)
    times = pd.to_datetime(result.kept["acquired_at"])
    by_split = {s: times[result.kept["split"] == s] for s in SPLITS}
    assert by_split["train"].max() <= by_split["val"].min()
    assert by_split["val"].max() <= by_split["test"].min()


def test_time_split_bad_timestamp_is_one_line_naming_row_and_value():
    frame = frame_of({"a": 5}).assign(acquired_at="2024-01-01T00:00:00Z")
    frame.loc[2, "acquired_at"] = "yesterday"
    with pytest.raises(StageError, match=rf"column 'acquired_at', row id {frame.at[2, 'id']}: .*'yesterday'"):
        split(frame, params(mode="time"), seed=0)


def test_leakage_check_finds_exact_near_and_group_overlap():
    kept = pd.DataFrame({"id": ["a", "b", "c", "d", "e", "f"], "split": ["train", "test", "train", "val", "train", "val"],
                         "content_hash": ["h1", "h1", "h2", "h3", "h4", "h5"],
                         "cluster_id": ["a", "b", "c", "c", "e", "f"], "near_duplicate_of": [None] * 6,
                         "author": ["x", "y", "z", "w", "q", "q"]})
    leaks = leakage(kept, "author")
    assert leaks == {"id": [], "exact_duplicate": ["h1"], "near_duplicate": ["c"], "group": ["q"]}


def test_unknown_mode_and_group_column_fail_with_the_key():
    with pytest.raises(StageError, match="split.mode"):
        split(frame_of({"a": 10}), params(mode="random"), seed=0)
    with pytest.raises(StageError, match="split.group_column"):
        split(frame_of({"a": 10}), params(group_column="nope"), seed=0)
