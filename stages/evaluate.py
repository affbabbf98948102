"""evaluate: score the trained model on the test split beside simple baselines; write DVC metrics and plots.

Reads the augmented table and the model folder. Scores the model on the test rows (never augmented) and fits
each baseline its modality declares (`stages/baselines.py`: TF-IDF + linear SVM for text, a small CNN from
scratch for images) on the split's own train rows (augmented copies excluded: what a user would fit on
`split.parquet`), scored on the same test rows. Writes `eval.json` (accuracy, macro/weighted precision,
recall and F1, ROC-AUC, log loss, per-class report, `baseline.<name>.{accuracy, macro_f1, fit_seconds}` and
`margin_macro_f1` = model minus best baseline; `ece` of the calibrated model (the temperature train fitted on
val, `temperature`) and `ece_uncalibrated`, 15 bins), a confusion-matrix PNG, a ROC-curve PNG, a reliability
diagram (`reliability.png`, both curves) and
`vs_baseline.csv` (for `dvc plots`); logs the model's metrics to the training run and each baseline as a run
of its own in the task's experiment.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

import numpy as np

from stages.common import StageError, atomic_path, build, load_params, read_parquet, run_main, write_json


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int
    baselines: dict[str, dict[str, Any]]   # settings per baseline name (stages/baselines.py)


def score_baselines(modality: Any, train: "pd.DataFrame", test: "pd.DataFrame", labels: Sequence[str], *,
                    settings: dict[str, dict[str, Any]], seed: int) -> dict[str, dict[str, float]]:
    """Fit every baseline `modality` declares on `train`, score it on `test`: name -> accuracy, macro-F1, seconds."""
    from sklearn.metrics import accuracy_score, f1_score

    from stages.baselines import run_baseline

    index = {lab: i for i, lab in enumerate(labels)}
    column = modality.payload_column
    y_train, y_test = train["label"].map(index).to_numpy(), test["label"].map(index).to_numpy()
    x_train, x_test = modality.baseline_input(list(train[column])), modality.baseline_input(list(test[column]))
    out = {}
    for name in modality.baselines:
        if name not in settings:
            raise StageError(f"params.yaml: evaluate.baselines.{name}: missing key")
        pred, seconds = run_baseline(name, x_train, y_train, x_test, params=settings[name], seed=seed)
        out[name] = {"accuracy": float(accuracy_score(y_test, pred)),
                     "macro_f1": float(f1_score(y_test, pred, labels=list(range(len(labels))), average="macro",
                                                zero_division=0)),
                     "fit_seconds": round(seconds, 2)}
    return out


def margin_over_baselines(macro_f1: float, baselines: dict[str, dict[str, float]]) -> float | None:
    """The model's macro-F1 minus the best baseline's (None without baselines)."""
    if not baselines:
        return None
    return float(macro_f1 - max(b["macro_f1"] for b in baselines.values()))


def baseline_table(metrics: dict[str, Any]) -> str:
    """`vs_baseline.csv`: one row per model (ours first), for `dvc plots` bar charts."""
    rows = [("model", metrics["macro_f1"], metrics["accuracy"])]
    rows += [(f"baseline:{name}", b["macro_f1"], b["accuracy"]) for name, b in metrics.get("baseline", {}).items()]
    return "model,macro_f1,accuracy\n" + "".join(f"{m},{f:.6f},{a:.6f}\n" for m, f, a in rows)


def evaluate(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Classification metrics for integer labels `y_true` and class probabilities `proba`."""
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    classes = list(range(len(labels)))
    y_pred = proba.argmax(1)
    metrics: dict[str, Any] = {"n_test": int(len(y_true)), "accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=classes, average=average, zero_division=0)
        metrics.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    present = np.unique(y_true)
    if len(present) < 2:
        metrics["roc_auc"] = None
    elif len(labels) == 2:
        metrics["roc_auc"] = float(roc_auc_score(y_true, proba[:, 1]))
    else:
        mask = np.isin(classes, present)
        sub = proba[:, mask] / proba[:, mask].sum(1, keepdims=True)
        metrics["roc_auc"] = float(roc_auc_score(y_true, sub, multi_class="ovr", average="macro", labels=present))
    clipped = np.clip(proba, 1e-7, 1.0)
    metrics["log_loss"] = float(log_loss(y_true, clipped / clipped.sum(1, keepdims=True), labels=classes))
    report = classification_report(y_true, y_pred, labels=classes, target_names=list(labels), output_dict=True,
                                   zero_division=0)
    metrics["per_class"] = {lab: {k: float(v) for k, v in report[lab].items()} for lab in labels}
    return metrics


def evaluate_slices(y_true: np.ndarray, proba: np.ndarray, slices: Sequence[str]) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 per slice value (e.g. each row's `label_source`: source, human, model, ...)."""
    from sklearn.metrics import accuracy_score, f1_score

    slices = np.asarray(slices, dtype=object)
    y_pred = proba.argmax(1)
    out = {}
    for name in sorted(set(slices.tolist())):
        mask = slices == name
        out[str(name)] = {"n": int(mask.sum()), "accuracy": float(accuracy_score(y_true[mask], y_pred[mask])),
                          "macro_f1": float(f1_score(y_true[mask], y_pred[mask], average="macro", zero_division=0))}
    return out


def test_digest(test: "pd.DataFrame") -> str:
    """A hash of the test set (ids and labels): two models compare only if they were scored on equal digests."""
    import hashlib

    rows = sorted(zip(test["id"].astype(str), test["label"].astype(str)))
    return hashlib.sha256("\n".join(f"{i}\t{lab}" for i, lab in rows).encode()).hexdigest()


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.6 * len(labels)))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(range(len(labels))), display_labels=list(labels),
                                            ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title("Confusion matrix (test)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_roc(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, roc_curve

    fig, ax = plt.subplots(figsize=(6, 5))
    classes = [1] if len(labels) == 2 else range(len(labels))
    for k in classes:
        positives = y_true == k
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, proba[:, k])
        ax.plot(fpr, tpr, label=f"{labels[k]} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC (test, one-vs-rest)")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--summary", required=True, help="training summary JSON (MLflow run id)")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--plots", required=True, help="folder for PNG plots")
    args = parser.parse_args(argv)

    from stages import tracking
    from stages.model import choose_device, load_classifier

    params = load_params()
    ep = build(EvaluateParams, params.get("evaluate"), "evaluate")
    frame = read_parquet(args.inp)
    test = frame[(frame["split"] == "test")].sort_values("id", kind="stable")
    if test.empty:
        raise StageError(f"{args.inp}: field 'split': no test rows")
    model_dir = Path(args.model_dir)
    if not (model_dir / "classifier.json").is_file():
        raise StageError(f"{model_dir}: no trained model (run: dvc repro train)")
    classifier, config, modality = load_classifier(model_dir)
    labels = config["labels"]
    index = {lab: i for i, lab in enumerate(labels)}
    y_true = test["label"].map(index).to_numpy()

    from stages.calibration import expected_calibration_error, plot_reliability, temperature_of
    from stages.model import predict_logits, softmax

    logits = predict_logits(classifier, modality, config["spec"], list(test[modality.payload_column]),
                            batch_size=ep.batch_size, device=choose_device())
    # the model as it serves: its logits divided by the temperature train fitted on val (arg-max unchanged)
    temperature = temperature_of(config)
    proba, uncalibrated = softmax(logits, temperature=temperature), softmax(logits)
    metrics = evaluate(y_true, proba, labels)
    metrics.update(temperature=temperature, ece=expected_calibration_error(proba, y_true),
                   ece_uncalibrated=expected_calibration_error(uncalibrated, y_true))
    metrics["test_digest"] = test_digest(test)
    if "label_source" in test.columns:  # how well the model does on rows labelled by people, rules, models, source
        metrics["by_label_source"] = evaluate_slices(y_true, proba, list(test["label_source"]))
    train = frame[frame["split"] == "train"]
    if "augmented" in train.columns:
        train = train[~train["augmented"].fillna(False).astype(bool)]
    train = train.sort_values("id", kind="stable")
    metrics["baseline"] = score_baselines(modality, train, test, labels, settings=ep.baselines,
                                          seed=int(params["base"]["seed"]))
    metrics["margin_macro_f1"] = margin_over_baselines(metrics["macro_f1"], metrics["baseline"])
    plots = Path(args.plots)
    plot_confusion(y_true, proba.argmax(1), labels, plots / "confusion_matrix.png")
    plot_roc(y_true, proba, labels, plots / "roc.png")
    plot_reliability({"uncalibrated": (uncalibrated, y_true), f"temperature {temperature:.3f}": (proba, y_true)},
                     plots / "reliability.png", title="Reliability (test)")
    with atomic_path(plots / "vs_baseline.csv") as tmp:
        tmp.write_text(baseline_table(metrics))
    write_json(args.metrics, metrics)

    summary = json.loads(Path(args.summary).read_text())
    with tracking.resume(params, summary["run_id"]):
        import mlflow

        flat = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)}
        for lab, row in metrics["per_class"].items():
            flat[f"test_f1.{lab}"] = row["f1-score"]
        for name, row in metrics.get("by_label_source", {}).items():
            flat[f"test_accuracy.label_source.{name}"] = row["accuracy"]
        mlflow.log_metrics(flat)
        mlflow.log_dict(metrics, "eval/eval.json")
        mlflow.log_artifact(str(plots / "confusion_matrix.png"), "eval")
        mlflow.log_artifact(str(plots / "roc.png"), "eval")
        mlflow.log_artifact(str(plots / "reliability.png"), "eval")
        if metrics["margin_macro_f1"] is not None:
            mlflow.log_metric("test_margin_macro_f1", metrics["margin_macro_f1"])
        experiment_id = mlflow.active_run().info.experiment_id
    for name, row in metrics["baseline"].items():
        tracking.log_baseline(params, experiment_id, name, row, study=summary.get("study_name", ""),
                              test_digest=metrics["test_digest"], data_md5=summary.get("train_data_md5", ""))
    margin = metrics["margin_macro_f1"]
    print(f"evaluate {args.task}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
          f"ECE {metrics['ece_uncalibrated']:.4f} -> {metrics['ece']:.4f} (T {temperature:.3f}); "
          + ", ".join(f"{n} macro-F1 {b['macro_f1']:.4f} ({b['fit_seconds']:.1f} s)" for n, b in metrics["baseline"].items())
          + (f"; margin {margin:+.4f}" if margin is not None else ""))


if __name__ == "__main__":
    run_main(main)
