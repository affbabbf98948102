"""predict: print predictions of a registered model for a CSV of texts, or a folder of images or recordings.

One CSV row per input: `label`, `confidence` (calibrated), `rejected` and `prob_<label>`. The registered model
applies the clean stage's rules first: a row clean would quarantine has no label and `rejected` says why.

    python -m stages.predict --model models:/news-classifier@champion texts.csv
    python -m stages.predict --model models:/animals-classifier@champion images/
    python -m stages.predict --model models:/digits-classifier@champion recordings/

The model's modality reads the input (`Modality.read_inputs`): a folder of its files, one file, or a CSV column.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common import StageError, load_params, run_main


def served_modality(model: Any) -> Any:
    """The modality a loaded pyfunc model serves (`stages.serving.ClassifierModel`); it reads the user's input."""
    try:
        return model.unwrap_python_model().modality
    except (AttributeError, ValueError):
        raise StageError("the model is not one this project registered (stages.serving.ClassifierModel)") from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model URI, e.g. models:/news-classifier@champion")
    parser.add_argument("--text-column", "--column", dest="column",
                        help="the CSV column holding the payloads (default: the model's payload column, e.g. text)")
    parser.add_argument("input", type=Path)
    args = parser.parse_args(argv)

    import mlflow
    from mlflow.exceptions import MlflowException

    from stages import tracking

    tracking.configure(load_params())
    if not args.input.exists():
        raise StageError(f"{args.input}: not found")
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except MlflowException as exc:
        raise StageError(f"{args.model}: {str(exc).splitlines()[0]}") from None
    modality = served_modality(model)
    column = modality.payload_column
    frame = modality.read_inputs(args.input, column=args.column or column)
    predictions = model.predict(frame[[column]])
    # rejected rows hold nulls (JSON null when served); here they print as empty cells beside their reason
    numeric = [c for c in predictions.columns if c == "confidence" or c.startswith("prob_")]
    predictions[numeric] = predictions[numeric].apply(pd.to_numeric)
    keys = frame[["file"]] if "file" in frame.columns else frame[[column]]
    pd.concat([keys.reset_index(drop=True), predictions.reset_index(drop=True)], axis=1).to_csv(
        sys.stdout, index=False, float_format="%.4f")


if __name__ == "__main__":
    run_main(main)
