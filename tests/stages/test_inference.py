"""Serving applies clean's per-row rules: quarantined rows come back rejected with clean's reason, never labelled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stages.common import StageError
from stages.inference import LOW_CONFIDENCE, predict_frame, screen, serving_rules
from stages.modalities import get_modality
from tests.conftest import png_bytes

TEXT = get_modality("text")
IMAGE = get_modality("image")
TEXT_RULES = TEXT.clean_params({"min_chars": 3, "max_chars": 50, "fix_encoding": True, "strip_markup": True,
                                "max_control_fraction": 0.05, "max_replacement_fraction": 0.01,
                                "near_duplicates": {"ngram": 5, "num_perm": 16, "bands": 4, "threshold": 0.7,
                                                    "seed": 1},
                                "pii": {"action": "redact", "kinds": ["email", "phone", "ip", "card", "iban"],
                                        "phone_regions": ["GB", "US"]}})
IMAGE_RULES = IMAGE.clean_params({"mode": "L", "size": 28, "min_side": 8, "max_side": 1000, "max_pixels": 100_000,
                                  "formats": ["PNG"], "near_duplicates": {"max_distance": 8, "min_correlation": 0.97}})


def fixed(proba: list[list[float]]):
    """A stand-in for the model's probabilities, checked to receive only the accepted payloads."""
    calls = []

    def predict(payloads):
        calls.append(list(payloads))
        return np.array(proba[:len(payloads)], dtype=np.float32)

    return predict, calls


@pytest.mark.parametrize("value,reason", [
    ("", "empty"), ("   \u200b ", "empty"), ("ab", "too_short"), ("x" * 51, "too_long"), ("bin\x00ary", "binary_content"),
    ("<p></p>", "empty"), (None, "not_text"), (3.5, "not_text"), ("\ufffd\ufffd\ufffd real words", "undecodable"),
])
def test_text_rows_clean_would_quarantine_are_rejected_with_its_reason(value, reason):
    payloads, reasons = screen([value], TEXT, TEXT_RULES)
    assert reasons == [reason] and payloads == [None]


def test_text_is_normalised_as_clean_normalises_it():
    payloads, reasons = screen(["  <b>caf\u00c3\u00a9</b>\u00a0ok  ", b"caf\xe9 bytes"], TEXT, TEXT_RULES)
    assert reasons == [None, None] and payloads == ["caf\u00e9 ok", "caf\u00e9 bytes"]


def test_personal_data_is_redacted_or_rejected_at_serving_as_clean_does_it():
    # the model was trained on redacted text, so it is served redacted text: the same placeholders, never the raw value
    predict, calls = fixed([[0.3, 0.7], [0.6, 0.4]])
    text = "call me on +44 20 7946 0958 or write to jane.doe@example.com today"
    out = predict_frame([text, "nothing personal in here"], modality=TEXT,
                        clean_params=dataclasses.replace(TEXT_RULES, max_chars=500), labels=["ham", "spam"],
                        predict=predict, min_confidence=None)
    assert calls == [["call me on <PHONE> or write to <EMAIL> today", "nothing personal in here"]]
    assert out["label"].tolist() == ["spam", "ham"] and out["rejected"].tolist() == [None, None]
    quarantine = dataclasses.replace(TEXT_RULES, max_chars=500,
                                     pii=dataclasses.replace(TEXT_RULES.pii, action="quarantine"))
    payloads, reasons = screen([text, "nothing personal in here"], TEXT, quarantine)
    assert reasons == ["personal_data", None] and payloads == [None, "nothing personal in here"]


@pytest.mark.parametrize("value,reason", [
    (b"", "empty_file"), (b"not an image at all", "not_an_image"), (png_bytes()[:60], "corrupt_image"),
    (png_bytes((4, 40)), "too_small"), (png_bytes((400, 400)), "too_many_pixels"),
    (png_bytes(fmt="BMP"), "format_not_allowed"), ("a string", "not_bytes"),
])
def test_image_rows_clean_would_quarantine_are_rejected_with_its_reason(value, reason):
    assert screen([value], IMAGE, IMAGE_RULES)[1] == [reason]


def test_rejected_rows_are_not_predicted_and_the_others_keep_their_order():
    predict, calls = fixed([[0.2, 0.8], [0.9, 0.1]])
    out = predict_frame(["", "a real message", "ab", "another one"], modality=TEXT, clean_params=TEXT_RULES,
                        labels=["ham", "spam"], predict=predict, min_confidence=None)
    assert calls == [["a real message", "another one"]]
    assert list(out.columns) == ["label", "confidence", "rejected", "prob_ham", "prob_spam"]
    assert out["label"].tolist() == [None, "spam", None, "ham"]
    assert out["rejected"].tolist() == ["empty", None, "too_short", None]
    assert out["confidence"].tolist() == [None, pytest.approx(0.8), None, pytest.approx(0.9)]
    assert out["prob_spam"].tolist()[0] is None  # null, not NaN: a JSON client gets null
    assert out.to_json(orient="records").count("null") == 2 * 4 + 2


def test_low_confidence_rows_lose_their_label_but_keep_their_probabilities():
    predict, _ = fixed([[0.55, 0.45], [0.95, 0.05]])
    out = predict_frame(["unsure text", "sure text"], modality=TEXT, clean_params=TEXT_RULES, labels=["a", "b"],
                        predict=predict, min_confidence=0.6)
    assert out["label"].tolist() == [None, "a"] and out["rejected"].tolist() == [LOW_CONFIDENCE, None]
    assert out["confidence"].tolist() == [pytest.approx(0.55), pytest.approx(0.95)]


def test_a_batch_of_only_rejected_rows_never_calls_the_model():
    predict, calls = fixed([])
    out = predict_frame(["", None], modality=TEXT, clean_params=TEXT_RULES, labels=["a", "b"], predict=predict,
                        min_confidence=None)
    assert calls == [] and out["rejected"].tolist() == ["empty", "not_text"] and out["label"].isna().all()


def test_min_confidence_must_be_a_probability():
    assert serving_rules(modality="text", clean={}, min_confidence=None)["min_confidence"] is None
    with pytest.raises(StageError, match="serve.min_confidence"):
        serving_rules(modality="text", clean={}, min_confidence=1.5)
