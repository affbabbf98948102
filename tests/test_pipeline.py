"""End to end: real `dvc repro` on a tiny profile, a real MLflow SQLite store, real Optuna storage."""

from __future__ import annotations

import base64
import json
import sys
import time

import pytest

from tests.conftest import png_bytes
from tests.pipeline_utils import REPO, copy_repo, dvc, edit_params, run, stages_run, tiny_profile
from tests.serving_utils import get, mlflow_serve, post, split_frame

pytestmark = pytest.mark.slow

TASKS = ("spam", "animals")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")

    def profile(params: dict) -> None:
        tiny_profile(params)
        # register the compressed variant whatever its F1 drop on the tiny data, so the versions are known
        params["register"].update(compressed=True, max_compressed_f1_drop=1.0)

    edit_params(repo, profile)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny profile"], repo)
    first = dvc(["repro"], repo)
    return repo, first


def test_repro_builds_and_registers_both_tasks(built):
    repo, first = built
    assert stages_run(first.stdout) == {f"{s}@{t}" for t in TASKS for s in
                                        ("acquire", "clean", "label", "split", "augment", "train", "evaluate",
                                         "compress", "register")}
    for task in TASKS:
        registered = json.loads((repo / "models" / task / "registered.json").read_text())
        assert registered["name"] == f"{task}-classifier"
        assert registered["alias"] == "champion" and registered["version"] == 1
        compressed = registered["compressed"]
        assert compressed["registered"] and compressed["version"] == 2, compressed
        assert compressed["alias"] == "champion-compressed"
        assert (repo / "models" / task / "compressed" / "model.safetensors").is_file()
        evaluation = json.loads((repo / "metrics" / task / "eval.json").read_text())
        assert {"accuracy", "macro_f1", "weighted_f1", "roc_auc", "log_loss", "per_class"} <= set(evaluation)
        baseline = {"spam": "tfidf_svm", "animals": "small_cnn"}[task]
        assert set(evaluation["baseline"]) == {baseline}
        assert 0.0 <= evaluation["baseline"][baseline]["macro_f1"] <= 1.0
        assert evaluation["margin_macro_f1"] == evaluation["macro_f1"] - evaluation["baseline"][baseline]["macro_f1"]
        assert (repo / "plots" / task / "confusion_matrix.png").stat().st_size > 1000
        assert (repo / "plots" / task / "reliability.png").stat().st_size > 1000
        assert 0.0 <= evaluation["ece"] <= 1.0 and 0.0 <= evaluation["ece_uncalibrated"] <= 1.0
        config = json.loads((repo / "models" / task / "model" / "classifier.json").read_text())
        assert evaluation["temperature"] == config["calibration"]["temperature"] > 0
        small = json.loads((repo / "models" / task / "compressed" / "classifier.json").read_text())
        assert small["calibration"]["fitted_on"] == "val" and small["calibration"]["temperature"] > 0
        assert json.loads((repo / "metrics" / task / "compress.json").read_text())["compressed"]["ece"] >= 0.0
        assert (repo / "plots" / task / "vs_baseline.csv").read_text().startswith("model,macro_f1,accuracy\nmodel,")
        card = (repo / "models" / task / "model_card.md").read_text()
        assert f"# Model card: {task}-classifier v1" in card and registered["data_md5"] in card
        assert f"| baseline `{baseline}` |" in card
        assert f"{evaluation['ece']:.4f} calibrated, {evaluation['ece_uncalibrated']:.4f} uncalibrated" in card
        train = json.loads((repo / "metrics" / task / "train.json").read_text())
        assert train["n_trials"] == 3 and train["n_complete"] >= 1
        assert set(train["leaderboard"]) <= {"head", "probe", "hybrid", "scratch"}
        assert train["best_strategy"] in train["leaderboard"]
        history = (repo / "metrics" / task / "optimization_history.csv").read_text().splitlines()
        assert history[0] == "trial,strategy,value,best_value" and len(history) == 1 + train["n_complete"]


def test_conservation_in_every_data_stage(built):
    repo, _ = built
    for task in TASKS:
        for stage in ("clean", "label", "split"):
            m = json.loads((repo / "metrics" / task / f"{stage}.json").read_text())
            assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"], (task, stage, m)
            assert sum(m["quarantined_by_reason"].values()) == m["rows_quarantined"]


def test_binary_task_has_roc_auc(built):
    repo, _ = built
    evaluation = json.loads((repo / "metrics" / "spam" / "eval.json").read_text())
    assert 0.0 <= evaluation["roc_auc"] <= 1.0


def test_champion_loads_from_registry_and_predicts(built):
    repo, _ = built
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/spam-classifier@champion")
    import pandas as pd

    out = model.predict(pd.DataFrame({"text": ["WINNER!! claim your free prize now, txt WIN to 80086",
                                               "see you at lunch tomorrow?"]}))
    assert list(out["label"]) and set(out["label"]) <= {"ham", "spam"}
    assert out[["prob_ham", "prob_spam"]].sum(axis=1).round(4).eq(1.0).all()

    image_model = mlflow.pyfunc.load_model("models:/animals-classifier@champion")
    out = image_model.predict(pd.DataFrame({"image": [png_bytes(), png_bytes(value=30)]}))
    assert len(out) == 2 and out["confidence"].between(0, 1).all()


def test_compressed_variant_loads_by_its_alias_and_agrees_with_the_champion(built):
    repo, _ = built
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("spam-classifier", "champion-compressed")
    assert version.tags["variant"] == "compressed" and version.tags["base_version"] == "1"
    assert version.tags["data.md5"] == client.get_model_version_by_alias("spam-classifier", "champion").tags["data.md5"]
    texts = pd.DataFrame({"text": ["WINNER!! claim your free prize now, txt WIN to 80086", "see you at lunch tomorrow?",
                                   "URGENT call 09061 to claim your cash award", "ok i'll be home by six"]})
    small = mlflow.pyfunc.load_model("models:/spam-classifier@champion-compressed").predict(texts)
    full = mlflow.pyfunc.load_model("models:/spam-classifier@champion").predict(texts)
    assert small[["prob_ham", "prob_spam"]].sum(axis=1).round(4).eq(1.0).all()
    # int8 + 30% pruning moves probabilities a little, not wholesale
    assert (small["prob_spam"] - full["prob_spam"]).abs().max() < 0.25


def test_predict_cli_prints_predictions(built, tmp_path):
    repo, _ = built
    csv = tmp_path / "texts.csv"
    csv.write_text('text\n"Free entry, text WIN now to claim"\n"ok see you later"\n')
    result = run([sys.executable, "-m", "stages.predict", "--model", "models:/spam-classifier@champion", str(csv)], repo)
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("text,label,confidence") and len(lines) == 3

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png_bytes(value=40 * i))
    result = run([sys.executable, "-m", "stages.predict", "--model", "models:/animals-classifier@champion",
                  str(folder)], repo)
    assert len(result.stdout.strip().splitlines()) == 4


def test_behaviour_tests_pass_on_the_champions(built):
    """tests/model/ (invariance, minimum functionality, clean's rules) against the tiny profile's champions."""
    repo, _ = built
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "model"),
                  "--tracking-uri", f"sqlite:///{repo / 'mlflow.db'}", *[a for t in TASKS for a in ("--task", t)]],
                 repo, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_mlflow_serves_the_champion_on_loopback(built):
    """`mlflow models serve` on 127.0.0.1 against the pipeline's registry, over real HTTP."""
    repo, _ = built
    with mlflow_serve(repo, "models:/spam-classifier@champion") as url:
        assert get(url + "/ping")[0] == 200
        status, body = post(url + "/invocations", split_frame("text", ["WINNER!! claim your free prize now",
                                                                       "see you at lunch tomorrow?"]))
        assert status == 200, body
        rows = json.loads(body)["predictions"]
        assert [r["label"] in ("ham", "spam") for r in rows] == [True, True]
        assert all(r["rejected"] is None and 0.5 <= r["confidence"] <= 1.0 for r in rows)

        # a row clean would quarantine comes back rejected with clean's reason; the others are predicted
        status, body = post(url + "/invocations", split_frame("text", ["call now to claim", "", "ab", "ok thanks"]))
        rows = json.loads(body)["predictions"]
        assert status == 200 and [r["rejected"] for r in rows] == [None, "empty", "too_short", None], rows
        assert [r["label"] is None for r in rows] == [False, True, True, False]
        assert rows[1]["confidence"] is None and rows[1]["prob_spam"] is None  # JSON null, never NaN

        # malformed payloads: HTTP 400, one line of JSON naming the problem, no stack trace (MLflow's own
        # messages: they may quote the input)
        for bad, says in ((b"{not json", "valid JSON"),
                          (json.dumps({"dataframe_split": {"columns": ["txt"], "data": [["x"]]}}).encode(),
                           "missing inputs ['text']"),
                          (json.dumps({"rows": [1, 2]}).encode(), "exactly one of the input fields")):
            status, body = post(url + "/invocations", bad)
            assert status == 400 and len(body.splitlines()) == 1, (bad, status, body[:300])
            error = json.loads(body)
            assert says in error["message"] and "stack_trace" not in error and "Traceback" not in error["message"]

        # a 10 MB body: answered, the text rejected by clean's length bound, not tokenised
        started = time.monotonic()
        status, body = post(url + "/invocations", split_frame("text", ["word " * 2_000_000, "a normal message"]))
        rows = json.loads(body)["predictions"]
        assert status == 200 and rows[0]["rejected"] == "too_long" and rows[1]["rejected"] is None, rows
        assert time.monotonic() - started < 60

    with mlflow_serve(repo, "models:/animals-classifier@champion") as url:  # images: base64 bytes in JSON
        images = [base64.b64encode(png_bytes()).decode(), base64.b64encode(b"not an image").decode()]
        status, body = post(url + "/invocations", split_frame("image", images))
        rows = json.loads(body)["predictions"]
        assert status == 200 and rows[0]["rejected"] is None and rows[1]["rejected"] == "not_an_image", rows


def test_second_repro_is_a_no_op(built):
    repo, _ = built
    again = dvc(["repro"], repo)
    assert stages_run(again.stdout) == set()
    assert "up to date" in again.stdout


def test_a_task_train_override_reruns_only_that_tasks_train_and_what_follows(built):
    """`tasks.spam.train` is merged over `train` for spam alone: DVC reruns spam's train onward, animals stays.
    Label lists only the task keys it reads, so the encoder does not run again; split depends on the whole task
    (its optional `split` keys), reruns in a second and writes the same table, so augment is skipped."""
    repo, _ = built
    animals_before = (repo / "models" / "animals" / "registered.json").read_text()
    edit_params(repo, lambda p: p["tasks"]["spam"].setdefault("train", {}).update(n_trials=4))
    rerun = dvc(["repro"], repo)
    assert stages_run(rerun.stdout) == {f"{s}@spam" for s in ("split", "train", "evaluate", "compress", "register")}
    assert (repo / "models" / "animals" / "registered.json").read_text() == animals_before
    registered = json.loads((repo / "models" / "spam" / "registered.json").read_text())
    assert registered["version"] == 3  # v2 is the first run's compressed variant
    assert registered["compressed"]["version"] == 4
    assert registered["compressed"]["alias"] == f"{registered['alias']}-compressed"
    # the gate: champion moves only on a strict improvement of test macro-F1
    assert registered["alias"] == ("champion" if "beats" in registered["reason"] else "challenger")
    assert registered["previous_champion_version"] == 1


def test_run_is_tagged_with_data_md5_and_git_commit(built):
    repo, _ = built
    import mlflow
    import yaml

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for task in TASKS:
        registered = json.loads((repo / "models" / task / "registered.json").read_text())
        run_ = mlflow.get_run(registered["run_id"])
        outs = lock["stages"][f"augment@{task}"]["outs"]
        assert run_.data.tags["data.md5"] == outs[0]["md5"]
        assert len(run_.data.tags["git.commit"]) == 40
        children = mlflow.search_runs([run_.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{run_.info.run_id}'")
        assert len(children) == {"spam": 4, "animals": 3}[task]  # the tiny profile's 3, spam's own 4 above
        assert set(children["tags.optuna.state"]) <= {"COMPLETE", "PRUNED"}


def test_baselines_are_mlflow_runs_beside_the_study(built):
    repo, _ = built
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("finetune-spam")
    # one run per evaluate: the newest belongs to the current eval.json (an earlier test may have rerun evaluate)
    runs = mlflow.search_runs([experiment.experiment_id], filter_string="tags.baseline = 'tfidf_svm'",
                              order_by=["attributes.start_time DESC"], output_format="list")
    evaluation = json.loads((repo / "metrics" / "spam" / "eval.json").read_text())
    assert runs and all(r.data.tags["stage"] == "evaluate" for r in runs)
    assert runs[0].data.tags["test_digest"] == evaluation["test_digest"]
    assert runs[0].data.metrics["test_macro_f1"] == evaluation["baseline"]["tfidf_svm"]["macro_f1"]
