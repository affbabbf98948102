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
    code, err = stage(repo, "stages.acquire", "nope", "--source", "data/nope/source", "--out", "x.parquet",
                      "--metrics", "m.json")
    assert_one_line(code, err, "tasks.nope", "unknown task", "news")


def test_missing_input_file(repo):
    code, err = stage(repo, "stages.clean", "news", "--in", "data/missing.parquet", "--out", "o.parquet",
                      "--quarantine", "q.parquet", "--metrics", "m.json")
    assert_one_line(code, err, "data/missing.parquet", "not found")


def test_unknown_modality(repo, tmp_path):
    edit_params(repo, lambda p: p["tasks"]["spam"].update(modality="video"))
    try:
        code, err = stage(repo, "stages.acquire", "spam", "--source", "data/spam/source", "--out", "x.parquet",
                          "--metrics", "m.json")
        assert_one_line(code, err, "tasks.spam.modality", "'video'")
    finally:
        edit_params(repo, lambda p: p["tasks"]["spam"].update(modality="text"))


def test_missing_label_column_in_table_source(repo, tmp_path):
    table = tmp_path / "mine.csv"
    table.write_text("body,category\nhello there friend,a\n")
    edit_params(repo, lambda p: p["tasks"].update(mine={
        "modality": "text", "max_per_class": None, "labels": ["a"], "label_map": {},
        "source": {"kind": "table", "file": "mine.csv", "text_column": "body", "label_column": "label",
                   "license": "test"}}))
    code, err = stage(repo, "stages.acquire", "mine", "--source", str(tmp_path), "--out", "x.parquet",
                      "--metrics", "m.json")
    assert_one_line(code, err, str(table), "'label'")


def test_a_source_path_from_before_sources_were_dependencies_says_where_files_go(repo, tmp_path):
    edit_params(repo, lambda p: p["tasks"].update(old={
        "modality": "text", "max_per_class": None, "labels": ["a"], "label_map": {},
        "source": {"kind": "table", "path": "data/incoming/old.csv", "text_column": "text", "label_column": "label",
                   "license": "test"}}))
    code, err = stage(repo, "stages.acquire", "old", "--source", "data/old/source", "--out", "x.parquet",
                      "--metrics", "m.json")
    assert_one_line(code, err, "tasks.old.source.path", "data/old/source/", "file:")


def test_params_typo_names_the_key(repo):
    edit_params(repo, lambda p: p["split"].update(val_ration=0.1))
    try:
        code, err = stage(repo, "stages.split", "news", "--in", "x.parquet", "--out", "o.parquet",
                          "--quarantine", "q.parquet", "--metrics", "m.json")
        assert_one_line(code, err, "split.val_ration")
    finally:
        edit_params(repo, lambda p: p["split"].pop("val_ration"))


def tiny_table(path, n_per_class: int = 6):
    """A minimal augmented table (train and val rows of two classes) for the train stage."""
    import pandas as pd

    rows = []
    for label, word in (("ham", "lunch"), ("spam", "prize")):
        for i in range(n_per_class):
            rows.append({"id": f"{label}{i}", "modality": "text", "text": f"{word} message number {i}",
                         "label": label, "split": "val" if i < 2 else "train"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def train_cli(repo, tmp_path):
    table = tiny_table(tmp_path / "augmented.parquet")
    return stage(repo, "stages.train", "spam", "--in", str(table), "--study-dir", str(tmp_path / "study"),
                 "--model-dir", str(tmp_path / "model"), "--summary", str(tmp_path / "training.json"),
                 "--metrics", str(tmp_path / "train.json"))


@pytest.mark.parametrize("module,args,section", [
    ("stages.train", None, ("train", "model")),
    ("stages.label", ["spam", "--in", "data/spam/clean.parquet", "--annotations", "a", "--out", "o.parquet",
                      "--quarantine", "q.parquet", "--rejected", "r.parquet", "--review-json", "r.json",
                      "--review-csv", "r.csv", "--metrics", "m.json", "--feature-store", "features"],
     ("label", "encoder")),
])
def test_unknown_backbone_names_the_key_and_the_known_ones(repo, tmp_path, module, args, section):
    first, second = section
    edit_params(repo, lambda p: p[first][second]["text"].update(backbone="minilm_l7"))
    try:
        code, err = train_cli(repo, tmp_path) if args is None else stage(repo, module, *args)
        assert_one_line(code, err, f"{first}.{second}.text.backbone", "'minilm_l7'",
                        "known: ['minilm_l6', 'mpnet_base', 'path']")
    finally:
        edit_params(repo, lambda p: p[first][second]["text"].update(backbone="minilm_l6"))


def test_unknown_strategy_names_the_key_and_the_known_ones(repo, tmp_path):
    import yaml

    original = yaml.safe_load((repo / "params.yaml").read_text())["train"]["strategy"]
    edit_params(repo, lambda p: p["train"].update(strategy="lora9000"))
    try:
        code, err = train_cli(repo, tmp_path)
        assert_one_line(code, err, "train.strategy", "'lora9000'",
                        "known: ['adapter', 'full', 'head', 'hybrid', 'lora', 'peft', 'probe', 'scratch']")
    finally:
        edit_params(repo, lambda p: p["train"].update(strategy=original))


@pytest.mark.slow
def test_a_fixed_head_width_trains_and_saves(repo, tmp_path):
    """`type: fixed` values never enter trial.params: the saved model must still get its head width."""
    import json

    def fixed(p):
        p["train"].update(n_trials=1, patience=1)
        p["train"]["model"]["text"]["max_length"] = 16
        p["train"]["search"]["head"].update(head_hidden={"type": "fixed", "value": 0},
                                            max_epochs={"type": "fixed", "value": 2})

    original = (repo / "params.yaml").read_text()
    edit_params(repo, fixed)
    try:
        code, err = train_cli(repo, tmp_path)
    finally:
        (repo / "params.yaml").write_text(original)
    assert code == 0, err[-3000:]
    config = json.loads((tmp_path / "model" / "classifier.json").read_text())
    assert config["head"]["hidden"] == 0, config
