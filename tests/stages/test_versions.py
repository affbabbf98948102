"""Code tests for stages/versions.py's pure core: lock parsing, version detection, model matching, cache checks."""

from __future__ import annotations

import hashlib

import pytest

from stages.common import StageError
from stages.versions import (
    DatasetVersion,
    ModelVersion,
    changed_params,
    is_cache_object_intact,
    matching_models,
    new_versions,
    pointer_outs,
    row_counts,
    stage_outs,
    task_entries,
    task_stages,
    with_task_entries,
)

LOCK = {"schema": "2.0", "stages": {
    "acquire@spam": {"outs": [{"path": "data/spam/raw.parquet", "md5": "r1"},
                              {"path": "metrics/spam/acquire.json", "md5": "m1"}]},
    "clean@spam": {"outs": [{"path": "data/spam/clean.parquet", "md5": "c1"}]},
    "acquire@news": {"outs": [{"path": "data/news/raw.parquet", "md5": "n1"}]},
    "train@spam": {"outs": [{"path": "models/spam/model", "md5": "t1.dir"}]},
}}


def test_task_stages_picks_the_foreach_entries_of_one_task():
    assert sorted(task_stages(LOCK, "spam")) == ["acquire", "clean", "train"]
    assert task_stages(LOCK, "missing") == {}
    assert task_stages({}, "spam") == {}


def test_stage_outs_in_stage_order_for_the_requested_stages():
    assert stage_outs(LOCK, "spam", ["acquire", "clean"]) == {
        "data/spam/raw.parquet": "r1", "metrics/spam/acquire.json": "m1", "data/spam/clean.parquet": "c1"}
    assert stage_outs(LOCK, "news", ["clean"]) == {}


def test_row_counts_prefer_rows_kept_then_rows():
    assert row_counts({"acquire": {"rows": 80, "rows_read": 81}, "clean": {"rows_in": 80, "rows_kept": 79},
                       "augment": {"rows_out": 3}}) == {"acquire": 80, "clean": 79}


@pytest.mark.parametrize("hashes,expected", [
    ([{"a": "1"}, {"a": "1"}, {"a": "2"}], [0, 2]),          # a commit that did not change the task's data is no version
    ([{}, {"a": "1"}, {"a": "2"}, {"a": "1"}], [1, 2, 3]),   # going back to earlier data is a new version
    ([{}, {}], []),
])
def test_new_versions_keeps_commits_where_the_data_changed(hashes, expected):
    assert new_versions([(f"rev{i}", h) for i, h in enumerate(hashes)]) == expected


def test_matching_models_by_data_md5():
    version = DatasetVersion(rev="r", date="d", subject="s", tags=[], hashes={"data/x/augmented.parquet": "aug1"},
                             rows={}, committed=[])
    models = [ModelVersion("x-classifier", "1", "aug1", "run1", []), ModelVersion("x-classifier", "2", "aug2", "run2", [])]
    assert [m.version for m in matching_models(version, models)] == ["1"]


def test_cache_object_check(tmp_path):
    body = b"some cached bytes"
    md5 = hashlib.md5(body).hexdigest()
    good = tmp_path / md5[2:]
    good.write_bytes(body)
    assert is_cache_object_intact(good, md5)
    assert is_cache_object_intact(good, md5 + ".dir")
    good.write_bytes(body[:-1] + b"!")
    assert not is_cache_object_intact(good, md5)


def test_uncached_outs_from_a_foreach_dag():
    from stages.versions import uncached_outs

    dag = {"stages": {"label": {"foreach": "${run}", "do": {
        "outs": ["data/${item}/labeled.parquet", {"data/${item}/features.npz": {"cache": False, "persist": True}}],
        "metrics": [{"metrics/${item}/label.json": {"cache": False}}]}}}}
    assert uncached_outs(dag, "spam") == {"data/spam/features.npz", "metrics/spam/label.json"}


def test_task_entries_keep_the_full_stage_keys_in_file_order():
    assert list(task_entries(LOCK, "spam")) == ["acquire@spam", "clean@spam", "train@spam"]
    assert task_entries(LOCK, "animals") == {}


@pytest.mark.parametrize("restored,expected", [
    # same stages: replaced in place, so restoring the committed entries gives back the committed order
    ({"acquire@spam": "A1", "clean@spam": "C1", "train@spam": "T1"},
     [("acquire@spam", "A1"), ("clean@spam", "C1"), ("acquire@news", "news"), ("train@spam", "T1")]),
    # a stage the version did not have goes; one it had that the lock no longer holds is appended
    ({"acquire@spam": "A1", "split@spam": "S1"},
     [("acquire@spam", "A1"), ("acquire@news", "news"), ("split@spam", "S1")]),
])
def test_with_task_entries_replaces_only_that_tasks_entries(restored, expected):
    stages = {"acquire@spam": "a", "clean@spam": "c", "acquire@news": "news", "train@spam": "t"}
    assert list(with_task_entries(stages, "spam", restored).items()) == expected


def test_changed_params_reports_leaves_of_whole_sections_and_ignores_equal_values():
    entries = {"acquire@news": {"params": {"params.yaml": {"tasks.news.max_per_class": 60, "base.seed": 42}}},
               "label@news": {"params": {"params.yaml": {"tasks.news": {"max_per_class": 60, "labels": ["a", "b"]},
                                                         "label": {"c": 0.01}}}}}
    params = {"base": {"seed": 42}, "tasks": {"news": {"max_per_class": 90, "labels": ["a", "b"]}},
              "label": {"c": 0.01}}
    assert changed_params(entries, params) == {"tasks.news.max_per_class": (60, 90)}
    assert changed_params(entries, {"base": {"seed": 1}}) == {  # sections gone now: each of their leaves
        "base.seed": (42, 1), "label.c": (0.01, None), "tasks.news.labels": (["a", "b"], None),
        "tasks.news.max_per_class": (60, None)}


def test_pointer_outs_are_relative_to_the_repository_root():
    text = "outs:\n- md5: abc.dir\n  hash: md5\n  path: source\n"
    assert pointer_outs("data/news/source.dvc", text) == [{"md5": "abc.dir", "hash": "md5", "path": "data/news/source"}]
    with pytest.raises(StageError, match="data/x.dvc: invalid YAML"):
        pointer_outs("data/x.dvc", "outs: [")
