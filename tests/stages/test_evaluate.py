"""Evaluation metrics and plots on known predictions."""

from __future__ import annotations

import numpy as np
import pytest

from stages.evaluate import evaluate, plot_confusion, plot_roc


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
