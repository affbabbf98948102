"""The promotion rule."""

from __future__ import annotations

import pytest

from stages.register import RegisterParams, decide, model_name


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


def test_model_name_template():
    assert model_name(RegisterParams("{task}-classifier", "macro_f1", 0.0), "news") == "news-classifier"
