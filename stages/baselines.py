"""Simple baselines: the models a user would build in minutes instead of fine-tuning.

Every evaluation fits the baselines its modality declares (`Modality.baselines`) on the same train rows and
scores them on the same test rows as the fine-tuned model; the promotion gate uses the margin. A baseline
is a function `(train_x, train_y, test_x, params, seed) -> test predictions`, looked up by name in
`BASELINES`, with its settings in `params.evaluate.baselines.<name>`. Inputs come from
`Modality.baseline_input`: a list of strings for text, a float array `(n, channels, height, width)` at the
data's native resolution for images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.common import StageError, build


@dataclass(frozen=True)
class TfidfSvmParams:
    ngram_max: int          # word n-grams 1..ngram_max
    min_df: int
    sublinear_tf: bool
    c: float                # LinearSVC inverse regularisation


@dataclass(frozen=True)
class SmallCnnParams:
    epochs: int
    lr: float
    batch_size: int
    width: int              # channels of the first two convs; the last two have twice as many


@dataclass(frozen=True)
class Baseline:
    fit_predict: Callable[[Any, np.ndarray, Any, Any, int], np.ndarray]
    params: type


def tfidf_svm(train_x: Sequence[str], train_y: np.ndarray, test_x: Sequence[str], params: TfidfSvmParams,
              seed: int) -> np.ndarray:
    """TF-IDF (word 1..n-grams, sublinear tf) + linear SVM: the classic text baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    vectorizer = TfidfVectorizer(ngram_range=(1, params.ngram_max), min_df=params.min_df,
                                 sublinear_tf=params.sublinear_tf)
    svm = LinearSVC(C=params.c, random_state=seed).fit(vectorizer.fit_transform(list(train_x)), train_y)
    return svm.predict(vectorizer.transform(list(test_x)))


def small_cnn_module(in_channels: int, n_classes: int, *, width: int, side: int) -> Any:
    """Four 3x3 conv-BatchNorm-ReLU layers in two pooled blocks, then a 128-unit dense layer: the textbook small
    CNN. BatchNorm is what a PyTorch user writes today; without it this baseline scored 0.9345 test macro-F1 on
    animals instead of 0.9623 (same split, seed and epochs), a strawman to beat."""
    from torch import nn

    w = width

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *conv(in_channels, w), *conv(w, w), nn.MaxPool2d(2), *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * w * (side // 4) ** 2, 128), nn.ReLU(),
        nn.Dropout(0.3), nn.Linear(128, n_classes))


def small_cnn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, params: SmallCnnParams,
              seed: int) -> np.ndarray:
    """A small CNN trained from scratch at native resolution with Adam, fixed epochs, no tricks."""
    import torch
    from torch.nn import functional as F

    from stages.model import autocast

    device = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
        y = torch.from_numpy(np.array(train_y, dtype=np.int64))  # a copy: the caller's array may be read-only
        n_classes = int(max(train_y.max(initial=0), 1)) + 1
        # channels-last (NHWC), as a PyTorch user on CPU writes it: oneDNN's fast layout, about 15% per step here
        model = small_cnn_module(x.shape[1], n_classes, width=params.width, side=x.shape[-1])
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(params.epochs):
            model.train()
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(order), params.batch_size):
                idx = order[start:start + params.batch_size]
                with autocast(device):
                    loss = F.cross_entropy(model(x[idx].contiguous(memory_format=torch.channels_last)).float(), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()
        test = torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32))
        test = test.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(device):
            return torch.cat([model(test[i:i + 512]).float() for i in range(0, len(test), 512)]).argmax(1).numpy()


BASELINES: dict[str, Baseline] = {
    "tfidf_svm": Baseline(tfidf_svm, TfidfSvmParams),
    "small_cnn": Baseline(small_cnn, SmallCnnParams),
}


def get_baseline(name: str) -> Baseline:
    try:
        return BASELINES[name]
    except KeyError:
        raise StageError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}") from None


def run_baseline(name: str, train_x: Any, train_y: np.ndarray, test_x: Any, *, params: dict[str, Any],
                 seed: int) -> tuple[np.ndarray, float]:
    """Fit baseline `name` with `params` (its `params.evaluate.baselines.<name>` section); return
    `(test predictions, fit + predict seconds)`."""
    baseline = get_baseline(name)
    settings = build(baseline.params, params, f"evaluate.baselines.{name}")
    started = time.perf_counter()
    predictions = baseline.fit_predict(train_x, np.asarray(train_y), test_x, settings, seed)
    return np.asarray(predictions), time.perf_counter() - started
