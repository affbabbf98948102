"""The labelling loop end to end: `dvc repro` on a tiny profile, then annotations in Label Studio's export
format go into the DVC-tracked annotations folder, and the next `dvc repro` relabels, retrains and
registers a new model version."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from tests.pipeline_utils import copy_repo, dvc, edit_params, run, stages_run, tiny_profile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("label-pipeline") / "repo")

    def profile(params):
        tiny_profile(params)
        params["run"] = ["spam"]  # one text task keeps this second pipeline test short

    edit_params(repo, profile)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny profile"], repo)
    first = dvc(["repro"], repo)
    return repo, first


def test_default_pipeline_runs_detection_and_writes_review_queue(built):
    repo, first = built
    assert "label@spam" in stages_run(first.stdout)
    metrics = json.loads((repo / "metrics/spam/label.json").read_text())
    assert metrics["detection"]["ran"] is True and metrics["detection"]["rows_checked"] == metrics["rows_in"]
    assert "suspected_label_errors" in metrics["detection"]
    assert metrics["rows_in"] == metrics["rows_kept"] + metrics["rows_quarantined"]
    tasks = json.loads((repo / "data/spam/review.json").read_text())
    assert isinstance(tasks, list) and len(tasks) == metrics["review_queue"]["rows"]
    assert (repo / "data/spam/review.csv").read_text().splitlines()[0].endswith("label,annotator")
    evaluation = json.loads((repo / "metrics/spam/eval.json").read_text())
    assert evaluation["by_label_source"]["source"]["n"] == evaluation["n_test"]


def test_importing_annotations_changes_lock_and_registered_model(built):
    repo, _ = built
    lock_before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    registered_before = json.loads((repo / "models/spam/registered.json").read_text())
    labeled = pd.read_parquet(repo / "data/spam/labeled.parquet").sort_values("id").head(6)
    flip = {"ham": "spam", "spam": "ham"}
    export = [{"id": n, "data": {"item_id": row.id, "text": row.text},
               "annotations": [{"id": n, "completed_by": 3, "was_cancelled": False,
                                "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                            "value": {"choices": [flip[row.label]]}}]}]}
              for n, row in enumerate(labeled.itertuples(), start=1)]
    (repo / "data/spam/annotations/label-studio-export.json").write_text(json.dumps(export))
    dvc(["add", "data/spam/annotations/label-studio-export.json"], repo)

    second = dvc(["repro"], repo)
    assert {"label@spam", "split@spam", "train@spam", "register@spam"} <= stages_run(second.stdout)
    lock_after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]

    def md5(lock, stage, path, key="outs"):
        return next(o["md5"] for o in lock[stage][key] if o["path"] == path)

    assert md5(lock_after, "label@spam", "data/spam/annotations", "deps") != md5(
        lock_before, "label@spam", "data/spam/annotations", "deps")
    assert md5(lock_after, "label@spam", "data/spam/labeled.parquet") != md5(
        lock_before, "label@spam", "data/spam/labeled.parquet")
    registered = json.loads((repo / "models/spam/registered.json").read_text())
    assert registered["version"] == registered_before["version"] + 1
    assert registered["run_id"] != registered_before["run_id"]

    relabelled = pd.read_parquet(repo / "data/spam/labeled.parquet").set_index("id").loc[labeled["id"]]
    assert (relabelled["label_source"] == "human").all() and (relabelled["label_annotators"] == "3").all()
    assert list(relabelled["label"]) == [flip[x] for x in labeled["label"]]
    metrics = json.loads((repo / "metrics/spam/label.json").read_text())
    assert metrics["annotations"]["accepted"] == 6 and metrics["annotations"]["labels_changed_from_source"] == 6
    # the feature cache was kept (persist) and reused: only the classifier reran
    assert len(list((repo / ".cache/features").glob("spam-text-*.npz"))) == 1
