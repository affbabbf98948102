"""Code tests for stages/versions.py's pure core: lock parsing, version detection, model matching, cache checks."""

from __future__ import annotations

import hashlib

import pytest

from stages.versions import (
    DatasetVersion,
    ModelVersion,
    is_cache_object_intact,
    matching_models,
    new_versions,
    row_counts,
    stage_outs,
    task_stages,
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
