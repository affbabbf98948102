"""Parameter-efficient fine-tuning end to end: on the tiny `spam` profile, real `dvc repro` trains a study with the
bottleneck adapter (kept beside the base weights) and then with peft's AdaLoRA (merged into them) on a tiny local
BERT checkpoint (`train.model.text: {backbone: path}`), evaluates, registers each in a real MLflow SQLite store,
and `python -m stages.predict` serves the registered version by the alias register gave it."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

from tests.pipeline_utils import copy_repo, dvc, edit_params, run, stages_run, tiny_profile
from tests.stages.test_efficient import save_tiny_bert

pytestmark = pytest.mark.slow

TEXTS = ["WINNER!! claim your free prize now, txt WIN to 80086", "see you at lunch tomorrow?"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The tiny spam profile with its data stages built once; each test changes only `train` params."""
    root = tmp_path_factory.mktemp("efficient")
    repo = copy_repo(root / "repo")
    checkpoint = save_tiny_bert(root / "tiny-bert")

    def profile(params: dict) -> None:
        tiny_profile(params)
        params["run"] = ["spam"]
        params["train"].update(n_trials=1, patience=1)
        params["train"]["model"]["text"] = {**params["train"]["model"]["text"], "backbone": "path",
                                            "path": str(checkpoint), "max_length": 16, "max_chunks": 1}
        for name in ("adapter", "peft"):
            params["train"]["search"][name].update(max_epochs={"type": "fixed", "value": 2},
                                                   batch_size={"type": "fixed", "value": 16})
        params["train"]["search"]["adapter"]["adapter_size"] = {"type": "fixed", "value": 8}

    edit_params(repo, profile)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny spam profile on a tiny BERT"], repo)
    dvc(["repro", "augment@spam"], repo)
    return repo


def predict(repo: Path, model_uri: str, tmp_path: Path) -> list[dict[str, str]]:
    """`python -m stages.predict` on two texts, as a user runs it; its CSV rows."""
    texts = tmp_path / "texts.csv"
    with texts.open("w", newline="") as handle:
        csv.writer(handle).writerows([["text"], *[[t] for t in TEXTS]])
    result = run([sys.executable, "-m", "stages.predict", "--model", model_uri, str(texts)], repo)
    return list(csv.DictReader(io.StringIO(result.stdout)))


def served_by_the_stage(model_dir: Path):
    """The model `train` just saved, loaded through the pyfunc class as the registry serves it."""
    from types import SimpleNamespace

    import pandas as pd

    from stages.serving import ClassifierModel

    model = ClassifierModel()
    model.load_context(SimpleNamespace(artifacts={"model_dir": str(model_dir)}))
    return model.predict(None, pd.DataFrame({"text": TEXTS}))


@pytest.mark.parametrize("strategy,method", [("adapter", None), ("peft", "adalora")])
def test_an_efficient_study_trains_registers_and_serves(repo, tmp_path, strategy, method):
    def choose(params: dict) -> None:
        params["train"]["strategy"] = strategy
        if method:
            params["train"]["peft"]["method"] = method

    edit_params(repo, choose)
    result = dvc(["repro"], repo)
    assert stages_run(result.stdout) == {f"{s}@spam" for s in ("train", "evaluate", "compress", "register")}

    summary = json.loads((repo / "models/spam/training.json").read_text())["method"]
    assert summary["method"] == (f"peft/{method}" if method else "adapter")
    assert summary["merged"] == bool(method) and 0 < summary["adapter_parameters"] < summary["trainable_parameters"]
    # a kept adapter is saved beside the base weights, and its size reported; a merged one leaves none
    assert (repo / "models/spam/model/adapter.safetensors").is_file() == (not method) == ("adapter_bytes" in summary)
    registered = json.loads((repo / "models/spam/registered.json").read_text())
    assert registered["name"] == "spam-classifier" and registered["alias"] in ("champion", "challenger")
    card = (repo / "models/spam/model_card.md").read_text()
    assert f"Method `{summary['method']}`" in card

    rows = predict(repo, f"models:/spam-classifier@{registered['alias']}", tmp_path)
    assert [row["text"] for row in rows] == TEXTS
    assert all(row["label"] in ("ham", "spam") and row["rejected"] == "" for row in rows), rows
    # the alias serves this study's model (the other method's version would predict other probabilities)
    expected = served_by_the_stage(repo / "models/spam/model")
    for row, (_, want) in zip(rows, expected.iterrows()):
        assert row["label"] == want["label"]
        assert abs(float(row["prob_spam"]) - want["prob_spam"]) < 1e-3, (rows, expected)
