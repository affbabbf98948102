"""Confidence calibration: one temperature per model, fitted on the validation rows, and how to measure it.

Temperature scaling (Guo et al., 2017) divides a model's logits by one scalar T > 0 fitted to minimise the
negative log-likelihood of held-out rows. Dividing every logit by the same T never changes the arg-max, so
accuracy and F1 stay what they were; only the confidences move (T > 1 softens an overconfident model).
The result lives in the model's `classifier.json` under `calibration`, and `stages.model.predict_proba` applies
it wherever the model predicts (evaluate, serving, `stages.predict`) with `stages.model.softmax`.

ECE (expected calibration error) is measured on `ECE_BINS` equal-width bins of the top-class confidence:
the gap between each bin's accuracy and its mean confidence, weighted by the bin's share of the rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stages.model import softmax

# The metric's definition (the and the literature's ECE-15), not a tunable: two ECEs compare only when
# they are binned alike, so it is fixed here and nowhere else.
ECE_BINS = 15
# log T is searched in this bracket: T from 0.05 (sharpen 20x) to 20 (flatten 20x)
LOG_T_BOUNDS = (float(np.log(0.05)), float(np.log(20.0)))


def nll(logits: np.ndarray, labels: np.ndarray, *, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of integer `labels` under softmax(`logits / temperature`)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of `labels` under softmax(`logits / T`).

    One bounded scalar search over log T: deterministic, no learning rate, and it cannot leave the bracket.
    With no rows, or when every row's arg-max is right, it returns 1.0 (the model unchanged): then the NLL only
    falls as T -> 0, so the rows say nothing about how confident the model should be (a tiny or easy val split).
    """
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or (np.asarray(logits).argmax(axis=1) == labels).all():
        return 1.0
    result = minimize_scalar(lambda log_t: nll(logits, labels, temperature=float(np.exp(log_t))),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width bins of the top-class confidence (0.0 with no rows)."""
    table = reliability_table(proba, labels, bins=bins)
    n = sum(row["count"] for row in table)
    if n == 0:
        return 0.0
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]) / n)


def reliability_table(proba: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """One row per confidence bin: its bounds, row count, mean confidence and accuracy (NaN-free: 0 when empty).

    Bins are (lower, upper], the first one [0, upper], as in Guo et al.
    """
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = proba.max(axis=1) if len(proba) else np.zeros(0)
    correct = (proba.argmax(axis=1) == labels) if len(proba) else np.zeros(0, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": float(confidence[mask].mean()) if count else 0.0,
                     "accuracy": float(correct[mask].mean()) if count else 0.0})
    return rows


def calibrate(logits: np.ndarray, labels: np.ndarray, *, fitted_on: str) -> dict[str, Any]:
    """The `calibration` entry of a model config: the fitted temperature and what it did on the rows it saw."""
    temperature = fit_temperature(logits, labels)
    return {"method": "temperature", "temperature": temperature, "fitted_on": fitted_on, "n": int(len(labels)),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature=temperature),
            "ece_before": expected_calibration_error(softmax(logits), labels),
            "ece_after": expected_calibration_error(softmax(logits, temperature=temperature), labels)}


def temperature_of(config: dict[str, Any]) -> float:
    """The temperature a saved model config carries; 1.0 (the raw softmax) for a model saved before calibration."""
    return float((config.get("calibration") or {}).get("temperature", 1.0))


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, title: str) -> None:
    """A reliability diagram: accuracy against mean confidence per bin, one line per named (proba, labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.common import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect calibration")
    for name, (proba, labels) in curves.items():
        table = [row for row in reliability_table(proba, labels) if row["count"]]
        ece = expected_calibration_error(proba, labels)
        ax.plot([r["confidence"] for r in table], [r["accuracy"] for r in table], marker="o",
                label=f"{name} (ECE {ece:.4f})")
    ax.set(xlabel="mean confidence (top class)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{title} ({ECE_BINS} bins)")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
