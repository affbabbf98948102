"""MLflow pyfunc model, logged as "models from code" so loading it never unpickles anything.

MLflow executes this file when the model is loaded; `set_model` at the bottom is the one
import-time action this repository allows, because models-from-code requires it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ClassifierModel(PythonModel):
    """Input: a DataFrame with the modality's payload column (`text`, or `image` bytes).

    Output, one row per input row: `label`, `confidence` (calibrated: the model's temperature), `rejected` and one
    `prob_<label>` column per class. A row the clean stage would quarantine is not predicted: `label` null,
    `rejected` its reason (`stages/inference.py`); so is a row below `serve.min_confidence` (`low_confidence`).
    """

    def load_context(self, context: Any) -> None:
        from stages.calibration import temperature_of
        from stages.inference import read_rules
        from stages.model import choose_device, load_classifier

        self.classifier, self.config, self.modality = load_classifier(Path(context.artifacts["model_dir"]))
        self.device = choose_device()
        self.temperature = temperature_of(self.config)
        rules_path = context.artifacts.get("rules")
        self.rules = read_rules(Path(rules_path)) if rules_path else None
        self.clean_params = self.modality.clean_params(self.rules["clean"]) if self.rules else None

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from stages.inference import predict_frame
        from stages.model import predict_proba

        column = self.modality.payload_column
        if column not in model_input.columns:
            raise ValueError(f"input needs a {column!r} column; got {list(model_input.columns)}")
        return predict_frame(
            list(model_input[column]), modality=self.modality, clean_params=self.clean_params,
            labels=self.config["labels"], min_confidence=(self.rules or {}).get("min_confidence"),
            predict=lambda payloads: predict_proba(self.classifier, self.modality, self.config["spec"], payloads,
                                                   batch_size=64, device=self.device, temperature=self.temperature))


mlflow.models.set_model(ClassifierModel())
