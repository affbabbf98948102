"""Bad input at the command line: non-zero exit and one line naming the file, field and value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.pipeline_utils import copy_repo, edit_params, env


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("cli") / "repo")


def stage(repo, *args):
    result = subprocess.run([sys.executable, "-m", *args], cwd=repo, env=env(), capture_output=True, text=True)
    return result.returncode, result.stderr.strip()


def assert_one_line(code, stderr, *needles):
    assert code == 2, stderr
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, stderr


def test_unknown_task(repo):
    code, err = stage(repo, "stages.acquire", "nope", "--out", "x.parquet", "--metrics", "m.json")
    assert_one_line(code, err, "tasks.nope", "unknown task", "news")


def test_missing_input_file(repo):
    code, err = stage(repo, "stages.clean", "news", "--in", "data/missing.parquet", "--out", "o.parquet",
                      "--quarantine", "q.parquet", "--metrics", "m.json")
    assert_one_line(code, err, "data/missing.parquet", "not found")


def test_unknown_modality(repo, tmp_path):
    edit_params(repo, lambda p: p["tasks"]["spam"].update(modality="video"))
    try:
        code, err = stage(repo, "stages.acquire", "spam", "--out", "x.parquet", "--metrics", "m.json")
        assert_one_line(code, err, "tasks.spam.modality", "'video'")
    finally:
        edit_params(repo, lambda p: p["tasks"]["spam"].update(modality="text"))


def test_missing_label_column_in_table_source(repo, tmp_path):
    table = tmp_path / "mine.csv"
    table.write_text("body,category\nhello there friend,a\n")
    edit_params(repo, lambda p: p["tasks"].update(mine={
        "modality": "text", "max_per_class": None, "labels": ["a"], "label_map": {},
        "source": {"kind": "table", "path": str(table), "text_column": "body", "label_column": "label",
                   "license": "test"}}))
    code, err = stage(repo, "stages.acquire", "mine", "--out", "x.parquet", "--metrics", "m.json")
    assert_one_line(code, err, str(table), "'label'")


def test_params_typo_names_the_key(repo):
    edit_params(repo, lambda p: p["split"].update(val_ration=0.1))
    try:
        code, err = stage(repo, "stages.split", "news", "--in", "x.parquet", "--out", "o.parquet",
                          "--quarantine", "q.parquet", "--metrics", "m.json")
        assert_one_line(code, err, "split.val_ration")
    finally:
        edit_params(repo, lambda p: p["split"].pop("val_ration"))
