"""predict: print predictions of a registered model for a CSV of texts or a folder of images.

One CSV row per input: `label`, `confidence` (calibrated), `rejected` and `prob_<label>`. The registered model
applies the clean stage's rules first: a row clean would quarantine has no label and `rejected` says why.

    python -m stages.predict --model models:/news-classifier@champion texts.csv
    python -m stages.predict --model models:/animals-classifier@champion images/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from stages.common import StageError, load_params, run_main

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_input(path: Path, *, text_column: str) -> pd.DataFrame:
    """A CSV becomes a `text` column; an image file or a folder of images becomes an `image` column."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not p.is_symlink())
        if not files:
            raise StageError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return pd.DataFrame({"file": [str(p) for p in files], "image": [p.read_bytes() for p in files]})
    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
        return pd.DataFrame({"file": [str(path)], "image": [path.read_bytes()]})
    if path.suffix.lower() == ".csv" and path.is_file():
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        if text_column not in frame.columns:
            raise StageError(f"{path}: column {text_column!r} not found; columns: {list(frame.columns)}")
        return frame.rename(columns={text_column: "text"})
    raise StageError(f"{path}: not found, or not a .csv, an image or a folder of images")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model URI, e.g. models:/news-classifier@champion")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("input", type=Path)
    args = parser.parse_args(argv)

    import mlflow
    from mlflow.exceptions import MlflowException

    from stages import tracking

    tracking.configure(load_params())
    frame = read_input(args.input, text_column=args.text_column)
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except MlflowException as exc:
        raise StageError(f"{args.model}: {str(exc).splitlines()[0]}") from None
    column = "image" if "image" in frame.columns else "text"
    predictions = model.predict(frame[[column]])
    # rejected rows hold nulls (JSON null when served); here they print as empty cells beside their reason
    numeric = [c for c in predictions.columns if c == "confidence" or c.startswith("prob_")]
    predictions[numeric] = predictions[numeric].apply(pd.to_numeric)
    keys = frame[["file"]] if "file" in frame.columns else frame[["text"]]
    pd.concat([keys.reset_index(drop=True), predictions.reset_index(drop=True)], axis=1).to_csv(
        sys.stdout, index=False, float_format="%.4f")


if __name__ == "__main__":
    run_main(main)
