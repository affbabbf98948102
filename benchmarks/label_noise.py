"""Label noise: flip a known share of labels, detect them with confident learning, and compare models
trained on the noisy labels with models trained after `drop` or `relabel`, side by side in one run.

For each task the clean table is split once (stratified, seeded) into a pool (80%) and a test set
(20%, never flipped). For each flip rate, labels of that share of the pool are flipped to a random
other class; the label stage's detector (5-fold out-of-fold logistic regression on the frozen
encoder's features, then cleanlab `find_label_issues`) flags rows; precision and recall of the flags
are measured against the flips. Then a logistic regression on the same features (a linear head on the
frozen backbone, as `train.strategy: head` with `head_hidden: 0`) is trained on the noisy pool, on the
pool minus flagged rows (`drop`), and on the pool with flagged rows relabelled where the out-of-fold
probability reaches `label.detection.relabel_threshold` (`relabel`), and scored on the clean test set.

Rate 0 runs detection on the labels as shipped: its flags are candidate errors in the source data.
Note that precision counts only planted flips as true, so real errors in the shipped labels show up
as false positives.

    .venv/bin/python benchmarks/label_noise.py [--tasks news animals] [--rates 0 0.05 0.1 0.2] [--max-rows N]

Reads `data/<task>/clean.parquet` (run `dvc repro clean@<task>` first) and params.yaml (`label`,
`label.encoder`, `tasks`). Encoder features are cached in `.cache/label_noise/<task>.npz`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["news", "animals"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--max-rows", type=int, default=None, help="stratified subset per task (for time)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=".cache/label_noise")
    parser.add_argument("--c", type=float, default=None, help="override label.detection.c (L2 inverse strength)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    from sklearn.model_selection import train_test_split

    from stages.common import build, load_params, section
    from stages.label import LabelParams, map_source_label
    from stages.labeling.detect import classifier, detect, fit_proba
    from stages.labeling.features import cached_extract
    from stages.modalities import task_modality

    torch.set_num_threads(args.threads)
    params = load_params()
    lp = build(LabelParams, section(params, "label"), "label")
    dp = lp.detection if args.c is None else replace(lp.detection, c=args.c)
    seed = int(section(params, "base.seed"))
    rows = []
    print(f"label.detection: c={dp.c} folds={dp.folds} filter_by={dp.filter_by} "
          f"relabel_threshold={dp.relabel_threshold}")
    print(f"{'task':8} {'rows':>5} {'flip':>5} {'flipped':>7} {'flagged':>7} {'prec':>6} {'recall':>6} "
          f"{'acc noisy':>9} {'acc drop':>8} {'acc relabel':>11} {'relabelled':>10} {'relabel ok':>10} {'s':>5}")
    for task_name in args.tasks:
        task = section(params, f"tasks.{task_name}")
        labels = list(task["labels"])
        modality = task_modality(params, task_name)
        spec = dict(section(params, f"label.encoder.{modality.name}"))
        frame = pd.read_parquet(f"data/{task_name}/clean.parquet")
        frame["mapped"] = [map_source_label(v, task["label_map"]) for v in frame["label"]]
        frame = frame[frame["mapped"].isin(labels)].sort_values("id", kind="stable").reset_index(drop=True)
        if args.max_rows and len(frame) > args.max_rows:
            frame, _ = train_test_split(frame, train_size=args.max_rows, stratify=frame["mapped"], random_state=seed)
            frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
        started = time.time()
        x = cached_extract(modality, spec, list(frame["id"]), list(frame[modality.payload_column]),
                           batch_size=lp.feature_batch_size, cache_path=Path(args.cache_dir) / f"{task_name}.npz",
                           desc=f"features {task_name}")
        features_s = time.time() - started
        y = frame["mapped"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
        pool, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)

        def accuracy(train_idx, train_y) -> float:
            model = classifier(kind="logistic_regression", c=dp.c, max_iter=dp.max_iter, knn_k=0, seed=seed)
            proba = fit_proba(model, x[train_idx], train_y, x[test], len(labels))
            return float((proba.argmax(1) == y[test]).mean())

        for rate in args.rates:
            started = time.time()
            rng = np.random.default_rng(seed + int(rate * 1000))
            noisy = y[pool].copy()
            flips = rng.choice(len(pool), int(round(rate * len(pool))), replace=False)
            noisy[flips] = (noisy[flips] + rng.integers(1, len(labels), len(flips))) % len(labels)
            found = detect(x[pool], noisy, n_classes=len(labels), folds=dp.folds, seed=seed, c=dp.c,
                           max_iter=dp.max_iter, filter_by=dp.filter_by)
            flagged = np.flatnonzero(found.issue_rank >= 0)
            hits = len(set(flagged) & set(flips))
            keep = np.setdiff1d(np.arange(len(pool)), flagged)
            relabelled = noisy.copy()
            # as the stage does: a confident model that disagrees with the given label
            confident = flagged[(found.proba[flagged].max(1) >= dp.relabel_threshold)
                                & (found.proba[flagged].argmax(1) != noisy[flagged])]
            relabelled[confident] = found.proba[confident].argmax(1)
            row = {
                "task": task_name, "rows": len(y), "pool": len(pool), "test": len(test), "flip_rate": rate,
                "flipped": len(flips), "flagged": len(flagged),
                "precision": hits / len(flagged) if len(flagged) else None,
                "recall": hits / len(flips) if len(flips) else None,
                "acc_noisy": accuracy(pool, noisy),
                "acc_drop": accuracy(pool[keep], noisy[keep]),
                "acc_relabel": accuracy(pool, relabelled),
                "relabelled": len(confident),
                "relabel_correct": float((relabelled[confident] == y[pool][confident]).mean()) if len(confident) else None,
                "seconds": round(time.time() - started, 1), "feature_seconds": round(features_s, 1),
            }
            rows.append(row)
            fmt = lambda v: "   -  " if v is None else f"{v:6.3f}"  # noqa: E731
            print(f"{task_name:8} {len(y):5d} {rate:5.2f} {len(flips):7d} {len(flagged):7d} {fmt(row['precision'])} "
                  f"{fmt(row['recall'])} {row['acc_noisy']:9.4f} {row['acc_drop']:8.4f} {row['acc_relabel']:11.4f} "
                  f"{len(confident):10d} {fmt(row['relabel_correct']):>10} {row['seconds']:5.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
