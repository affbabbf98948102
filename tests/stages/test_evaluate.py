"""Evaluation metrics and plots on known predictions."""

from __future__ import annotations

import numpy as np
import pytest

from stages.evaluate import baseline_table, evaluate, margin_over_baselines, plot_confusion, plot_roc, score_baselines


def test_binary_metrics():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    m = evaluate(y, proba, ["ham", "spam"])
    assert m["accuracy"] == 0.75
    assert m["roc_auc"] == 1.0  # every spam scores above every ham
    assert m["per_class"]["spam"]["recall"] == 1.0 and m["per_class"]["ham"]["recall"] == 0.5
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7])), rel=1e-6)


def test_multiclass_one_vs_rest_and_missing_class():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1, 0.0], [0.1, 0.8, 0.1, 0.0], [0.1, 0.1, 0.8, 0.0], [0.3, 0.3, 0.4, 0.0]])
    m = evaluate(y, proba, ["a", "b", "c", "d"])  # class d never appears in test
    assert m["accuracy"] == 1.0 and m["roc_auc"] == 1.0
    assert m["per_class"]["d"]["support"] == 0.0
    assert m["macro_f1"] == pytest.approx(0.75)  # d's F1 is 0 and still counts in the macro average


def test_plots_are_written(tmp_path):
    y = np.array([0, 1, 2, 1])
    proba = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.2 / 3
    plot_confusion(y, proba.argmax(1), ["a", "b", "c"], tmp_path / "cm.png")
    plot_roc(y, proba, ["a", "b", "c"], tmp_path / "roc.png")
    for name in ("cm.png", "roc.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baselines_are_scored_on_the_given_rows():
    import pandas as pd

    from stages.modalities import get_modality

    spam = ["win a free prize now", "claim your free cash prize", "free entry win cash now"]
    ham = ["see you at lunch today", "are we meeting later", "thanks for dinner"]
    train = pd.DataFrame({"text": spam + ham, "label": ["spam"] * 3 + ["ham"] * 3})
    test = pd.DataFrame({"text": ["free cash prize", "lunch later"], "label": ["spam", "spam"]})
    settings = {"tfidf_svm": {"ngram_max": 1, "min_df": 1, "sublinear_tf": True, "c": 1.0}}
    scores = score_baselines(get_modality("text"), train, test, ["ham", "spam"], settings=settings, seed=0)
    assert scores["tfidf_svm"]["accuracy"] == 0.5  # "lunch later" is ham to the SVM, labelled spam here
    assert set(scores["tfidf_svm"]) == {"accuracy", "macro_f1", "fit_seconds"}
    with pytest.raises(Exception, match="evaluate.baselines.tfidf_svm: missing key"):
        score_baselines(get_modality("text"), train, test, ["ham", "spam"], settings={}, seed=0)


def test_margin_and_table():
    metrics = {"macro_f1": 0.95, "accuracy": 0.96, "baseline": {"tfidf_svm": {"macro_f1": 0.97, "accuracy": 0.98}}}
    assert margin_over_baselines(0.95, metrics["baseline"]) == pytest.approx(-0.02)
    assert margin_over_baselines(0.95, {}) is None
    assert baseline_table(metrics).splitlines() == ["model,macro_f1,accuracy", "model,0.950000,0.960000",
                                                    "baseline:tfidf_svm,0.970000,0.980000"]
