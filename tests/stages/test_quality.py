"""Code tests for stages/quality.py: the report mirrors the metrics and is written atomically."""

from __future__ import annotations

from stages.quality import charts, flatten, write_report

METRICS = {"rows_in": 10, "rows_kept": 7, "rows_quarantined": 3,
           "quarantined_by_reason": {"near_duplicate": 2, "too_short": 1},
           "class_balance": {"per_label": {"a": 4, "b": 3}, "min_over_max": 0.75}, "leakage": {}}


def test_flatten_uses_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_charts_come_from_metrics_and_skip_empty_ones():
    assert charts(METRICS) == {"quarantined by reason": {"near_duplicate": 2.0, "too_short": 1.0},
                               "class balance (kept rows)": {"a": 4.0, "b": 3.0}}


def test_write_report_writes_markdown_and_png(tmp_path):
    target = tmp_path / "reports" / "task" / "clean"
    write_report(target, "clean: task", METRICS, charts(METRICS))
    assert sorted(p.name for p in target.iterdir()) == ["quality.md", "quality.png"]
    text = (target / "quality.md").read_text()
    assert "**10** rows in, **7** kept, **3** quarantined" in text
    assert "| `quarantined_by_reason.near_duplicate` | 2 |" in text
    png = (target / "quality.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    write_report(target, "clean: task", METRICS, charts(METRICS))  # overwrite in place, byte-identical
    assert (target / "quality.png").read_bytes() == png
