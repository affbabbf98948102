"""What every prediction of a registered model goes through: the clean stage's per-row rules, then the model.

A served model carries the clean parameters it was trained under (`serving_rules.json`, written by register).
Each input row is normalised and validated exactly as clean does it (`Modality.normalise`: NFKC, markup,
mojibake and length bounds for text; format whitelist, decompression-bomb cap, size bounds, mode and size for
images). A row clean would quarantine is not predicted: its `label` is null and `rejected` names clean's
reason (`empty`, `too_short`, `corrupt_image`, `too_many_pixels`, ...). Personal data is handled as clean
handles it (`clean.by_modality.text.pii`): redacted to the same placeholders the model was trained on, or the
row rejected as `personal_data` where clean quarantines it. With `min_confidence` set, a predicted row
below it gets `label` null and `rejected: low_confidence` (its probabilities are kept). The other rows are
predicted as usual. Duplicate detection is a dataset rule, not a row rule, so it does not apply here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common import StageError
from stages.modalities import Modality

RULES_FILE = "serving_rules.json"
LOW_CONFIDENCE = "low_confidence"


@dataclass(frozen=True)
class ServeParams:
    min_confidence: float | None     # a predicted row below this confidence: label null, rejected low_confidence


def serving_rules(*, modality: str, clean: dict[str, Any], min_confidence: float | None) -> dict[str, Any]:
    """The rules a registered model applies to its inputs: its modality's clean params and `serve.min_confidence`."""
    if min_confidence is not None and not 0.0 <= float(min_confidence) <= 1.0:
        raise StageError(f"params.yaml: serve.min_confidence: {min_confidence!r} must be null or in [0, 1]")
    return {"modality": modality, "clean": clean, "min_confidence": min_confidence}


def write_rules(path: Path, rules: dict[str, Any]) -> None:
    path.write_text(json.dumps(rules, indent=2, sort_keys=True) + "\n")


def read_rules(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def screen(values: Sequence[Any], modality: Modality, clean_params: Any) -> tuple[list[Any], list[str | None]]:
    """Clean's per-row rules on raw input values: `(payloads, reasons)`, reason None for a row to predict.

    Bytes given for a text column are decoded as acquire decodes files (UTF-8, then cp1252, then latin-1).
    """
    payloads: list[Any] = []
    reasons: list[str | None] = []
    for value in values:  # a null or a number fails clean's type check (not_text, not_bytes) like any other value
        payload, reason = modality.normalise(modality.from_input(value), clean_params)
        if reason is None:  # personal data: redacted as clean redacts it, or rejected where clean quarantines it
            scrubbed, _, reason = modality.personal_data(payload, clean_params)
            payload = scrubbed if reason is None else None
        payloads.append(payload)
        reasons.append(reason)
    return payloads, reasons


def predict_frame(values: Sequence[Any], *, modality: Modality, clean_params: Any | None, labels: Sequence[str],
                  predict: Callable[[list[Any]], np.ndarray], min_confidence: float | None) -> pd.DataFrame:
    """`label`, `confidence`, `rejected` and `prob_<label>` per input row, in input order.

    `predict` maps accepted payloads to class probabilities. Rejected rows hold null (None) in every column but
    `rejected`, so JSON clients get `null`, never NaN. `clean_params` None skips the rules (a model registered
    before they existed).
    """
    if clean_params is None:
        payloads, reasons = list(values), [None] * len(values)
    else:
        payloads, reasons = screen(values, modality, clean_params)
    accepted = [i for i, r in enumerate(reasons) if r is None]
    proba = predict([payloads[i] for i in accepted]) if accepted else np.zeros((0, len(labels)), dtype=np.float32)
    n = len(reasons)
    label: list[str | None] = [None] * n
    confidence: list[float | None] = [None] * n
    columns: dict[str, list[float | None]] = {f"prob_{lab}": [None] * n for lab in labels}
    for row, p in zip(accepted, proba):
        top = int(np.argmax(p))
        confidence[row] = float(p[top])
        for k, lab in enumerate(labels):
            columns[f"prob_{lab}"][row] = float(p[k])
        if min_confidence is not None and p[top] < float(min_confidence):
            reasons[row] = LOW_CONFIDENCE
        else:
            label[row] = labels[top]
    return pd.DataFrame({"label": pd.Series(label, dtype=object), "confidence": pd.Series(confidence, dtype=object),
                         "rejected": pd.Series(reasons, dtype=object),
                         **{k: pd.Series(v, dtype=object) for k, v in columns.items()}})


def output_schema(labels: Sequence[str]) -> Any:
    """The pyfunc output schema: `label` and `rejected` strings, `confidence` and `prob_<label>` doubles, each
    nullable (a rejected row has only `rejected`)."""
    from mlflow.types import ColSpec, DataType, Schema

    return Schema([ColSpec(DataType.string, "label", required=False),
                   ColSpec(DataType.double, "confidence", required=False),
                   ColSpec(DataType.string, "rejected", required=False),
                   *[ColSpec(DataType.double, f"prob_{lab}", required=False) for lab in labels]])
