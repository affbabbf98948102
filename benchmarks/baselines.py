"""Ours vs the simple baselines, side by side on the pipeline's own split, and `dvc repro` wall time per stage.

For each task with a trained model (`make run`; add `spam` to `run` in params.yaml for spam), this loads the
model from `models/<task>/model`, scores it on the test rows of `data/<task>/augmented.parquet`, fits every
baseline of the task's modality on the same train rows (`stages.evaluate.score_baselines`, the evaluate stage's
own code) and prints macro-F1, accuracy and fit seconds with the ratio ours/baseline.

    .venv/bin/python benchmarks/baselines.py [--tasks news animals spam] [--repro]

`--repro` also times `dvc repro --force --single-item` of every stage of those tasks, in DAG order (it reruns
the whole pipeline: minutes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

STAGES = ("acquire", "clean", "label", "split", "augment", "train", "evaluate", "compress", "register")


def compare(task: str, params: dict) -> None:
    from sklearn.metrics import accuracy_score, f1_score

    from stages.common import read_parquet
    from stages.evaluate import score_baselines
    from stages.model import choose_device, load_classifier, predict_proba

    data, model_dir = Path(f"data/{task}/augmented.parquet"), Path(f"models/{task}/model")
    if not (data.is_file() and (model_dir / "classifier.json").is_file()):
        print(f"{task}: no model yet (add it to `run` in params.yaml and run `dvc repro`)")
        return
    frame = read_parquet(data)
    test = frame[frame["split"] == "test"].sort_values("id", kind="stable")
    train = frame[(frame["split"] == "train") & ~frame["augmented"].fillna(False).astype(bool)].sort_values("id")
    classifier, config, modality = load_classifier(model_dir)
    labels = config["labels"]
    y = test["label"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
    started = time.perf_counter()
    pred = predict_proba(classifier, modality, config["spec"], list(test[modality.payload_column]),
                         batch_size=params["evaluate"]["batch_size"], device=choose_device()).argmax(1)
    ours_s = time.perf_counter() - started
    ours = {"macro_f1": f1_score(y, pred, average="macro"), "accuracy": accuracy_score(y, pred)}
    baselines = score_baselines(modality, train, test, labels, settings=params["evaluate"]["baselines"],
                                seed=int(params["base"]["seed"]))
    print(f"\n{task}: {len(train)} train rows, {len(test)} test rows; ours = {config['strategy']} "
          f"{config['spec'].get('backbone')}")
    print(f"  {'model':28} {'macro-F1':>9} {'accuracy':>9} {'seconds':>8} {'F1 ours/base':>13}")
    print(f"  {'ours (predict only)':28} {ours['macro_f1']:9.4f} {ours['accuracy']:9.4f} {ours_s:8.1f}")
    for name, row in baselines.items():
        print(f"  {'baseline ' + name:28} {row['macro_f1']:9.4f} {row['accuracy']:9.4f} {row['fit_seconds']:8.1f} "
              f"{ours['macro_f1'] / max(row['macro_f1'], 1e-9):12.4f}x")


def repro_times(tasks: list[str]) -> None:
    print("\ndvc repro --force --single-item, per stage (seconds):")
    print(f"  {'stage':10} " + " ".join(f"{t:>9}" for t in tasks))
    total = dict.fromkeys(tasks, 0.0)
    for stage in STAGES:
        row = []
        for task in tasks:
            started = time.perf_counter()
            done = subprocess.run(["dvc", "repro", "--force", "--single-item", f"{stage}@{task}"],
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode:
                sys.exit(f"dvc repro {stage}@{task} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
            total[task] += seconds
            row.append(f"{seconds:9.1f}")
        print(f"  {stage:10} " + " ".join(row))
    print(f"  {'total':10} " + " ".join(f"{total[t]:9.1f}" for t in tasks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["news", "animals", "spam"])
    parser.add_argument("--repro", action="store_true", help="also time every stage (reruns the pipeline)")
    args = parser.parse_args()

    import torch

    from stages.common import load_params

    torch.set_num_threads(os.cpu_count() or 1)
    params = load_params()
    for task in args.tasks:
        compare(task, params)
    if args.repro:
        repro_times([t for t in args.tasks if t in params["run"]])


if __name__ == "__main__":
    main()
