"""Temperature scaling and ECE: the fit recovers a known temperature, ECE measures what it should."""

from __future__ import annotations

import numpy as np
import pytest

from stages.calibration import (
    ECE_BINS,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_table,
    temperature_of,
)
from stages.model import softmax


def sampled(temperature: float, *, n: int = 20000, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): the true temperature is known."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 4.0, size=(n, classes))
    p = softmax(logits, temperature=temperature).astype(np.float64)
    labels = np.array([rng.choice(classes, p=row / row.sum()) for row in p])
    return logits, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_labels_were_drawn_at(true_t):
    logits, labels = sampled(true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_calibration_lowers_nll_and_ece_and_never_moves_the_argmax():
    logits, labels = sampled(3.0)  # the raw softmax is overconfident 3x
    result = calibrate(logits, labels, fitted_on="val")
    t = result["temperature"]
    assert result["nll_after"] < result["nll_before"] and result["ece_after"] < result["ece_before"] / 3
    assert result["ece_after"] < 0.02 and result["n"] == len(labels) and result["fitted_on"] == "val"
    assert (softmax(logits, temperature=t).argmax(1) == logits.argmax(1)).all()
    assert nll(logits, labels, temperature=t) == pytest.approx(result["nll_after"])


def test_ece_by_hand():
    # two rows at confidence 0.9, one right one wrong (accuracy 0.5): gap 0.4; two at 0.6, both right: gap 0.4
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(proba, labels) == pytest.approx(0.4)
    assert expected_calibration_error(proba, np.array([0, 0, 1, 1])) == pytest.approx((2 * 0.1 + 2 * 0.4) / 4)


def test_reliability_bins_are_equal_width_and_hold_every_row():
    proba = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.7, 0.3]])
    table = reliability_table(proba, np.array([0, 0, 1, 1]))
    assert len(table) == ECE_BINS and sum(r["count"] for r in table) == 4
    assert table[-1]["count"] == 2 and table[-1]["upper"] == 1.0  # confidence 1.0 falls in the last bin
    assert table[0]["lower"] == 0.0 and all(b["lower"] == pytest.approx(a["upper"]) for a, b in zip(table, table[1:]))


def test_empty_rows_rows_without_errors_and_old_configs():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    # every row right: the NLL falls all the way to T -> 0, nothing to fit; the model is left as it is
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert fit_temperature(logits, np.array([0, 1, 0])) == 1.0 and fit_temperature(logits, np.array([0, 0, 0])) != 1.0
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 0.0
    assert temperature_of({}) == 1.0 and temperature_of({"calibration": {"temperature": 1.7}}) == 1.7
