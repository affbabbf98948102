"""Human-readable quality reports: a Markdown summary and one PNG of bar charts, per stage and task.

Built only from a stage's metrics dict, so the report and `dvc metrics diff` never disagree.
`write_report` writes the folder atomically: `quality.md` and `quality.png`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from stages.common import atomic_path

# metrics keys drawn as bar charts when present: title -> path into the metrics dict
_CHARTS = {
    "quarantined by reason": ("quarantined_by_reason",),
    "class balance (kept rows)": ("class_balance", "per_label"),
    "rows per split": ("rows_per_split",),
    "leakage across splits": ("leakage",),
}


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`, sorted, as `dvc metrics show` lists them."""
    out: dict[str, Any] = {}
    for key in sorted(metrics):
        value = metrics[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def charts(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The bar charts a metrics dict supports, title -> {bar: value}; empty ones are left out."""
    out = {}
    for title, path in _CHARTS.items():
        node: Any = metrics
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node and all(isinstance(v, (int, float)) for v in node.values()):
            out[title] = {str(k): float(v) for k, v in node.items()}
    return out


def markdown(title: str, metrics: dict[str, Any], chart_titles: list[str]) -> str:
    lines = [f"# Data quality: {title}", ""]
    rows_in, kept, quarantined = (metrics.get(k) for k in ("rows_in", "rows_kept", "rows_quarantined"))
    if rows_in is not None:
        lines += [f"**{rows_in}** rows in, **{kept}** kept, **{quarantined}** quarantined.", ""]
    if chart_titles:
        lines += [f"![{', '.join(chart_titles)}](quality.png)", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in flatten(metrics).items()]
    return "\n".join(lines) + "\n"


def png(bars: dict[str, dict[str, float]]) -> bytes:
    """One horizontal bar chart per entry, stacked vertically; byte-identical across runs."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    panels = bars or {"no data": {}}
    heights = [max(1.2, 0.28 * len(v) + 0.8) for v in panels.values()]
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, sum(heights)), squeeze=False,
                                gridspec_kw={"height_ratios": heights})
    for axis, (title, values) in zip(axes[:, 0], panels.items()):
        names = list(values)
        axis.barh(names, [values[n] for n in names], color="#4477aa")
        for y, name in enumerate(names):
            axis.annotate(f"{values[name]:g}", (values[name], y), xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=8)
        axis.set_title(title, fontsize=10, loc="left")
        axis.invert_yaxis()
        axis.tick_params(labelsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def write_report(directory: str | Path, title: str, metrics: dict[str, Any], bars: dict[str, dict[str, float]]) -> None:
    """Write `<directory>/quality.md` and `<directory>/quality.png` atomically (the folder is a DVC output)."""
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        (tmp / "quality.md").write_text(markdown(title, metrics, list(bars)), encoding="utf-8")
        (tmp / "quality.png").write_bytes(png(bars))
