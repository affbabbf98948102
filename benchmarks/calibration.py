"""Calibration of the trained models as they are: temperature fitted on val, ECE on test before and after.

    .venv/bin/python benchmarks/calibration.py                 # every task in params `run`, from models/<task>/model
    .venv/bin/python benchmarks/calibration.py --repo /path/to/checkout news

Prints, per task: the temperature the train stage would fit (stages/calibration.py), val and test ECE (15 bins)
without and with it, test accuracy and mean confidence. Reads `data/<task>/augmented.parquet` and the model folder;
writes nothing. Text models read whole articles: news takes a minute or two on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*")
    parser.add_argument("--repo", type=Path, default=Path("."), help="a checkout with data and models built")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from stages.calibration import calibrate, expected_calibration_error
    from stages.common import load_params, offline_env, read_parquet
    from stages.model import choose_device, load_classifier, predict_logits, softmax

    offline_env()
    tasks = args.tasks or load_params(args.repo / "params.yaml")["run"]
    print("| task | T (val) | val ECE before | val ECE after | test ECE before | test ECE after | test accuracy | "
          "test mean confidence before / after | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in tasks:
        started = time.perf_counter()
        classifier, config, modality = load_classifier(args.repo / "models" / task / "model")
        frame = read_parquet(args.repo / "data" / task / "augmented.parquet")
        index = {lab: i for i, lab in enumerate(config["labels"])}
        rows = {}
        for split in ("val", "test"):
            part = frame[frame["split"] == split].sort_values("id", kind="stable")
            logits = predict_logits(classifier, modality, config["spec"], list(part[modality.payload_column]),
                                    batch_size=args.batch_size, device=choose_device())
            rows[split] = (logits, part["label"].map(index).to_numpy())
        fit = calibrate(*rows["val"], fitted_on="val")
        t = fit["temperature"]
        logits, y = rows["test"]
        before, after = softmax(logits), softmax(logits, temperature=t)
        print(f"| {task} | {t:.4f} | {fit['ece_before']:.4f} | {fit['ece_after']:.4f} | "
              f"{expected_calibration_error(before, y):.4f} | {expected_calibration_error(after, y):.4f} | "
              f"{float((logits.argmax(1) == y).mean()):.4f} | {before.max(1).mean():.4f} / {after.max(1).mean():.4f} | "
              f"{time.perf_counter() - started:.0f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
