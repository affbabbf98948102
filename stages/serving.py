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

    Output: `label`, `confidence` and one `prob_<label>` column per class.
    """

    def load_context(self, context: Any) -> None:
        from stages.model import choose_device, load_classifier

        self.classifier, self.config, self.modality = load_classifier(Path(context.artifacts["model_dir"]))
        self.device = choose_device()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from stages.model import predict_proba

        column = self.modality.payload_column
        if column not in model_input.columns:
            raise ValueError(f"input needs a {column!r} column; got {list(model_input.columns)}")
        payloads = [self.modality.decode_input(v) for v in model_input[column]]
        proba = predict_proba(self.classifier, self.modality, self.config["spec"], payloads,
                              batch_size=64, device=self.device)
        labels = self.config["labels"]
        out = pd.DataFrame({"label": [labels[i] for i in proba.argmax(1)], "confidence": proba.max(1)})
        for i, lab in enumerate(labels):
            out[f"prob_{lab}"] = proba[:, i]
        return out


mlflow.models.set_model(ClassifierModel())
