"""The baseline registry: each baseline learns a separable fixture, is reproducible under its seed, and an
unknown name fails with the known ones."""

from __future__ import annotations

import numpy as np
import pytest

from stages.baselines import BASELINES, get_baseline, run_baseline
from stages.common import StageError
from stages.modalities import get_modality
from tests.conftest import png_bytes

TFIDF = {"ngram_max": 2, "min_df": 1, "sublinear_tf": True, "c": 1.0}
CNN = {"epochs": 30, "lr": 1e-2, "batch_size": 5, "width": 4}


def _texts():
    spam = ["win a free prize now", "claim your free cash prize", "free entry win cash now", "you won a prize claim"]
    ham = ["see you at lunch today", "are we meeting later", "thanks for dinner", "call me when you land"]
    return spam + ham, np.array([1] * 4 + [0] * 4)


def _images():
    # dark images with a bright stripe vs bright images with a dark stripe
    values = [20, 30, 40, 50, 60, 200, 210, 220, 230, 240]
    return get_modality("image").baseline_input([png_bytes((12, 12), value=v) for v in values]), np.array([0] * 5 + [1] * 5)


def test_every_modality_declares_registered_baselines():
    for name in ("text", "image"):
        modality = get_modality(name)
        assert modality.baselines and all(b in BASELINES for b in modality.baselines)


def test_tfidf_svm_separates_spam_from_ham():
    texts, labels = _texts()
    pred, seconds = run_baseline("tfidf_svm", texts, labels, ["free prize cash win", "see you at dinner"],
                                 params=TFIDF, seed=0)
    assert pred.tolist() == [1, 0] and seconds >= 0


def test_small_cnn_learns_at_native_resolution_and_repeats_under_its_seed():
    x, y = _images()
    assert x.shape == (10, 1, 12, 12) and 0.0 <= x.min() and x.max() <= 1.0
    first, _ = run_baseline("small_cnn", x, y, x, params=CNN, seed=3)
    again, _ = run_baseline("small_cnn", x, y, x, params=CNN, seed=3)
    assert (first == y).mean() >= 0.9
    assert first.tolist() == again.tolist()


def test_small_cnn_leaves_the_global_rng_alone():
    import torch

    x, y = _images()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_baseline("small_cnn", x, y, x, params={**CNN, "epochs": 1}, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_unknown_baseline_and_bad_params_fail_in_one_line():
    with pytest.raises(StageError, match=r"unknown baseline 'bert'; known: \['small_cnn', 'tfidf_svm'\]"):
        get_baseline("bert")
    texts, labels = _texts()
    with pytest.raises(StageError, match="evaluate.baselines.tfidf_svm"):
        run_baseline("tfidf_svm", texts, labels, texts, params={"ngram_max": 2}, seed=0)
