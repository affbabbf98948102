"""The review queue in Label Studio's task-import JSON, and the same queue as CSV.

Each Label Studio task carries `data` (the item id, the payload as its modality shows it: the text, or an
image or a recording as a data URI (`Modality.review_value`), the current label and why it is queued) and a `predictions` block with the suggested label and its score, so an
annotator starts from a pre-annotation. Its JSON export comes back through `annotations.parse_label_studio`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from stages.labeling.annotations import ANNOTATOR_FIELD, ITEM_ID, LABEL_FIELD, csv_escape

FROM_NAME = "label"  # the <Choices> tag name; Label Studio writes it into every result as `from_name`


def _as_is(payload: Any) -> Any:
    return payload


def _optional(value: Any) -> Any:
    if value is None or (not isinstance(value, (str, bytes)) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def review_columns(queue: pd.DataFrame) -> pd.DataFrame:
    """Normalise any labelled table to the queue's columns: suggested label/score fall back to label/confidence."""
    out = pd.DataFrame({"id": queue["id"]})
    out["review_reason"] = queue["review_reason"] if "review_reason" in queue else None
    out["current_label"] = queue["label"] if "label" in queue else None
    out["label_source"] = queue["label_source"] if "label_source" in queue else None
    if "suggested_label" in queue:
        out["suggested_label"] = queue["suggested_label"]
        out["suggested_score"] = queue["suggested_score"]
    else:
        out["suggested_label"] = queue["label"] if "label" in queue else None
        out["suggested_score"] = queue["label_confidence"] if "label_confidence" in queue else None
    return out


def label_studio_tasks(queue: pd.DataFrame, *, payload_column: str, model_version: str,
                       show: Callable[[Any], Any] = _as_is) -> list[dict]:
    """Label Studio import tasks, one per queued row, each pre-annotated with the suggested label.

    `show` turns a payload into what the task carries (`Modality.review_value`: a data URI for bytes)."""
    cols = review_columns(queue)
    tasks = []
    for payload, row in zip(queue[payload_column], cols.itertuples(index=False)):
        data = {ITEM_ID: row.id, payload_column: show(payload), "current_label": _optional(row.current_label),
                "label_source": _optional(row.label_source), "review_reason": _optional(row.review_reason)}
        task: dict[str, Any] = {"data": data}
        suggested = _optional(row.suggested_label)
        if suggested is not None:
            score = _optional(row.suggested_score)
            task["predictions"] = [{
                "model_version": model_version,
                "score": None if score is None else round(float(score), 6),
                "result": [{"from_name": FROM_NAME, "to_name": payload_column, "type": "choices",
                            "value": {"choices": [suggested]}}],
            }]
        tasks.append(task)
    return tasks


def review_csv(queue: pd.DataFrame, *, payload_column: str, show: Callable[[Any], Any] = _as_is) -> str:
    """The queue as CSV for people without Label Studio: fill in `label` (and `annotator`), then put it back.

    Cells that a spreadsheet would run as a formula are escaped (`annotations.csv_escape`); reading the file
    back with `annotations.parse_csv` reverses it.
    """
    cols = review_columns(queue).rename(columns={"id": ITEM_ID})
    cols[payload_column] = [show(p) for p in queue[payload_column]]
    cols[LABEL_FIELD] = ""
    cols[ANNOTATOR_FIELD] = ""
    buffer = io.StringIO()
    # CRLF rows (RFC 4180): a field holding a bare CR is then quoted too; with LF rows a CR split the row
    cols.map(csv_escape).to_csv(buffer, index=False, lineterminator="\r\n")
    return buffer.getvalue()


def label_config(labels: Sequence[str], *, payload_column: str, tag: str) -> str:
    """The Label Studio labelling config matching the tasks (`from_name`/`to_name` as in the predictions).

    `tag` is the object tag that shows a payload (`Modality.label_studio_tag`: Text, Image, Audio)."""
    choices = "\n".join(f"    <Choice value={quoteattr(lab)}/>" for lab in labels)
    return (f"<View>\n  <{tag} name={quoteattr(payload_column)} value=\"${payload_column}\"/>\n"
            f"  <Choices name=\"{FROM_NAME}\" toName={quoteattr(payload_column)} choice=\"single\" showInline=\"true\">\n"
            f"{choices}\n  </Choices>\n</View>\n")


def dumps_tasks(tasks: list[dict]) -> str:
    return json.dumps(tasks, indent=1, ensure_ascii=False) + "\n"
