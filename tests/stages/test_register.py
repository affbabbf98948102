"""The promotion rule."""

from __future__ import annotations

import pytest

from stages.register import (
    RegisterParams,
    best_baseline,
    compressed_decision,
    decide,
    metric_tag,
    model_name,
    tag_metric,
)


@pytest.mark.parametrize(
    "candidate,champion,margin,alias",
    [
        (0.90, None, 0.0, "champion"),
        (0.91, 0.90, 0.0, "champion"),
        (0.90, 0.90, 0.0, "challenger"),
        (0.89, 0.90, 0.0, "challenger"),
        (0.905, 0.90, 0.01, "challenger"),
        (0.92, 0.90, 0.01, "champion"),
    ],
)
def test_decide(candidate, champion, margin, alias):
    decision = decide(candidate, champion, min_improvement=margin)
    assert decision.alias == alias and decision.reason


def test_the_same_model_registered_again_does_not_take_champion():
    # the champion's metric comes back from its version tag; rounded there, an identical candidate "beat" it
    f1 = 0.9369461491429456
    champion = tag_metric({"macro_f1": metric_tag(f1)}, "macro_f1")
    assert champion == f1
    assert decide(f1, champion, min_improvement=0.0).alias == "challenger"
    assert tag_metric({}, "macro_f1") is None and tag_metric({"macro_f1": "nan"}, "macro_f1") is None


def test_model_name_template():
    assert model_name(RegisterParams("{task}-classifier", "macro_f1", 0.0, 0.0, True, 0.05), "news") == "news-classifier"


COMPRESS = {"compressed": {"macro_f1": 0.93}, "macro_f1_delta": -0.02, "size_ratio": 0.64, "speedup": 1.7}


def test_compressed_variant_is_registered_within_the_allowed_f1_drop():
    ok, reason = compressed_decision(COMPRESS, enabled=True, max_drop=0.05)
    assert ok and "0.9300" in reason and "-0.0200" in reason and "x0.64" in reason


def test_compressed_variant_is_skipped_beyond_the_drop_or_when_off():
    ok, reason = compressed_decision(COMPRESS, enabled=True, max_drop=0.01)
    assert not ok and "register.max_compressed_f1_drop" in reason
    ok, reason = compressed_decision(COMPRESS, enabled=False, max_drop=0.05)
    assert not ok and "register.compressed" in reason


def test_gate_refuses_comparison_on_different_test_data():
    assert decide(0.99, 0.50, min_improvement=0.0, same_test_data=False).alias == "challenger"


def test_gate_never_promotes_when_data_checks_failed():
    assert decide(0.99, None, min_improvement=0.0, checks_passed=False).alias == "challenger"


@pytest.mark.parametrize("split_metrics,passed", [
    ({"leakage": {"exact": 0, "near_duplicate": 0, "group": 0}}, True),
    ({"leakage": {"exact": 0, "near_duplicate": 2}}, False),
    ({"contract_violations": 1}, False),
    ({}, True),
])
def test_data_checks_passed(split_metrics, passed):
    from stages.register import data_checks_passed

    assert data_checks_passed(split_metrics)[0] is passed


def test_model_card_covers_data_study_metrics_and_limitations():
    from stages.register import Decision, render_card

    card = render_card(
        name="news-classifier", version=3, task="news", modality="text", labels=["a", "b"],
        summary={"train_data_md5": "abc123", "study_name": "news-abc", "n_trials": 5, "n_complete": 3, "n_pruned": 2,
                 "n_failed": 0, "best_trial": 1, "best_epoch": 4, "best_params": {"lr": 0.01}},
        evaluation={"accuracy": 0.9, "macro_f1": 0.85, "test_digest": "feed", "margin_macro_f1": 0.05,
                    "baseline": {"tfidf_svm": {"accuracy": 0.82, "macro_f1": 0.8, "fit_seconds": 1.5}},
                    "per_class": {"a": {"precision": 1.0, "recall": 0.8, "f1-score": 0.89, "support": 5},
                                  "b": {"precision": 0.7, "recall": 1.0, "f1-score": 0.82, "support": 3}}},
        data={"hashes": {"dvc.split.split.parquet": "d41d"}, "rows_per_split": {"test": 8}, "sources": ["pypi:x"],
              "licenses": ["MIT"]},
        decision=Decision("champion", "no champion yet"))
    for needle in ("news-classifier v3", "abc123", "feed", "d41d", "MIT", "pypi:x", "3 complete, 2 pruned",
                   "| macro_f1 | 0.8500 |", "| b | 0.7000 |", "Weakest class: `b`", "Known limitations",
                   "| baseline `tfidf_svm` | 0.8000 | 0.8200 | 1.5 |", "Margin over the best baseline (macro-F1): +0.0500"):
        assert needle in card, needle


@pytest.mark.parametrize("candidate, champion, baseline, margin, alias, needle", [
    (0.97, None, ("tfidf_svm", 0.98), 0.0, "challenger", "does not beat baseline tfidf_svm 0.9800"),
    (0.98, None, ("tfidf_svm", 0.98), 0.0, "challenger", "does not beat baseline"),   # a tie is not a win
    (0.985, None, ("tfidf_svm", 0.98), 0.01, "challenger", "by more than 0.01"),
    (0.99, 0.995, ("tfidf_svm", 0.98), 0.0, "challenger", "does not beat champion"),   # then the old rules apply
    (0.99, None, ("tfidf_svm", 0.98), 0.0, "champion", "no champion yet"),
    (0.99, 0.985, ("small_cnn", 0.98), 0.0, "champion", "beats champion"),
])
def test_gate_refuses_a_model_that_loses_to_the_baseline(candidate, champion, baseline, margin, alias, needle):
    decision = decide(candidate, champion, min_improvement=0.0, baseline=baseline, min_margin_over_baseline=margin)
    assert decision.alias == alias and needle in decision.reason


def test_best_baseline_reads_eval_json():
    metrics = {"baseline": {"a": {"macro_f1": 0.7}, "b": {"macro_f1": 0.9}}}
    assert best_baseline(metrics, "macro_f1") == ("b", 0.9)
    assert best_baseline({}, "macro_f1") is None and best_baseline(metrics, "accuracy") is None


def test_compressed_variant_must_beat_the_baseline_too():
    ok, reason = compressed_decision(COMPRESS, enabled=True, max_drop=0.05, baseline=("tfidf_svm", 0.95))
    assert not ok and "does not beat baseline tfidf_svm 0.9500" in reason
    ok, _ = compressed_decision(COMPRESS, enabled=True, max_drop=0.05, baseline=("tfidf_svm", 0.90))
    assert ok


def test_model_card_and_compressed_description_state_both_eces():
    from stages.register import calibration_lines, compressed_calibration

    lines = "\n".join(calibration_lines({"temperature": 1.8, "ece": 0.012, "ece_uncalibrated": 0.042}))
    assert "T = 1.8000" in lines and "0.0120 calibrated, 0.0420 uncalibrated" in lines and "15 equal-width" in lines
    assert calibration_lines({"accuracy": 0.9}) == []  # an eval.json from before calibration: no section
    small = compressed_calibration({"compressed": {"temperature": 1.7, "ece": 0.015, "ece_uncalibrated": 0.05}})
    assert "T = 1.7000" in small and "0.0150 calibrated, 0.0500 uncalibrated" in small
    assert compressed_calibration({"compressed": {}}) == ""


def test_model_card_reports_the_training_method_and_its_adapter():
    from stages.register import method_lines

    assert method_lines(None) == []
    (line,) = method_lines({"method": "adapter", "merged": False, "trainable_parameters": 30_000,
                            "adapter_parameters": 29_000, "adapter_bytes": 117_000})
    assert line == ("- Method `adapter`: 30,000 trainable parameters, adapter 29,000 parameters, "
                    "117,000 bytes on disk (adapter.safetensors)")
    assert "merged into the weights" in method_lines({"method": "peft/lora", "merged": True,
                                                      "trainable_parameters": 9, "adapter_parameters": 8})[0]
