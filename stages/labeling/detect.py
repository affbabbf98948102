"""Semi-automatic label-error detection: out-of-fold probabilities plus confident learning.

A logistic regression on frozen pretrained-encoder features is fitted K times; each row is scored
only by the model that did not see it. cleanlab's `find_label_issues` then ranks the rows whose
given label the out-of-fold probabilities contradict (Northcutt et al., confident learning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detection:
    checked: np.ndarray        # bool per input row: had enough same-class rows to be cross-validated
    proba: np.ndarray          # (n, n_classes) out-of-fold probabilities; NaN rows where not checked
    issue_rank: np.ndarray     # int per row: 0 = most likely error, -1 = not flagged
    folds: int


def classifier(*, kind: str, c: float, max_iter: int, knn_k: int, seed: int):
    """A scaled linear or kNN classifier over embeddings (`kind`: logistic_regression | knn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic_regression":
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    if kind == "knn":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=knn_k, weights="distance"))
    raise ValueError(f"unknown classifier {kind!r}; known: ['knn', 'logistic_regression']")


def fit_proba(model, x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Fit `model` and return probabilities over all `n_classes` (classes absent from training get 0)."""
    from threadpoolctl import threadpool_limits

    # One BLAS/OpenMP thread: lbfgs on a few thousand rows is tiny work per call, and on a shared 2-core
    # machine spinning thread pools made one fit 6-15x slower (4.6 s vs 27-73 s on animals, measured).
    with threadpool_limits(limits=1):
        model.fit(x_train, y_train)
        out = np.zeros((len(x), n_classes), dtype=np.float64)
        if len(x):
            out[:, model.classes_] = model.predict_proba(x)
    return out


def out_of_fold_proba(x: np.ndarray, y: np.ndarray, *, n_classes: int, folds: int, seed: int, c: float,
                      max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Stratified K-fold out-of-fold probabilities.

    Rows of classes with fewer than 2 rows cannot be held out and scored fairly; they are returned
    as not checked. K shrinks to the smallest checked class size. Returns `(proba, checked, k)`.
    """
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=n_classes)
    checked = counts[y] >= 2
    proba = np.full((len(y), n_classes), np.nan)
    present = np.unique(y[checked])
    if len(present) < 2:
        return proba, np.zeros(len(y), dtype=bool), 0
    k = int(min(folds, counts[present].min()))
    idx = np.flatnonzero(checked)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for train, held in splitter.split(idx, y[idx]):
        model = classifier(kind="logistic_regression", c=c, max_iter=max_iter, knn_k=0, seed=seed)
        proba[idx[held]] = fit_proba(model, x[idx[train]], y[idx[train]], x[idx[held]], n_classes)
    return proba, checked, k


def find_issues(y: np.ndarray, proba: np.ndarray, checked: np.ndarray, *, filter_by: str) -> np.ndarray:
    """Rank of each row among likely label errors (0 = most likely), -1 where not flagged or not checked."""
    from cleanlab.filter import find_label_issues

    rank = np.full(len(y), -1, dtype=np.int64)
    idx = np.flatnonzero(checked)
    if len(idx) == 0:
        return rank
    # cleanlab wants labels 0..K-1 with every class present: compress to the classes that were checked
    present = np.unique(y[idx])
    remap = {c: i for i, c in enumerate(present)}
    sub_y = np.array([remap[c] for c in y[idx]])
    sub_p = proba[np.ix_(idx, present)]
    sub_p = sub_p / np.clip(sub_p.sum(1, keepdims=True), 1e-12, None)
    ranked = find_label_issues(sub_y, sub_p, filter_by=filter_by, return_indices_ranked_by="self_confidence",
                               n_jobs=1)
    rank[idx[np.asarray(ranked, dtype=np.int64)]] = np.arange(len(ranked))
    return rank


def detect(x: np.ndarray, y: np.ndarray, *, n_classes: int, folds: int, seed: int, c: float, max_iter: int,
           filter_by: str) -> Detection:
    """Out-of-fold probabilities and the confident-learning ranking for labels `y` on features `x`."""
    proba, checked, k = out_of_fold_proba(x, y, n_classes=n_classes, folds=folds, seed=seed, c=c, max_iter=max_iter)
    return Detection(checked, proba, find_issues(y, proba, checked, filter_by=filter_by), k)
