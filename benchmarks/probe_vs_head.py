"""`probe` vs `head` on the same frozen features, side by side: validation and test macro-F1 per setting.

Why text defaults to `probe`: an early-stopped MLP/linear head peaks on a few hundred validation rows within an
epoch or two, so the study's best-on-val head is partly luck; a converged L2 logistic regression is stable.
Reads the task's table and the cached training features (`models/<task>/study/features/`, written by
`make run`), extracts test features once with the same encoder spec, and fits each setting with the train
stage's own strategy classes.

    .venv/bin/python benchmarks/probe_vs_head.py [--task news]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="news")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import hashlib
    import json

    import torch
    from sklearn.metrics import f1_score

    from stages.common import file_md5, load_params, read_parquet, task_params
    from stages.model import batched_forward
    from stages.modalities import task_modality
    from stages.training.frozen import HeadStrategy, ProbeStrategy
    from stages.training.strategy import split_data

    torch.set_num_threads(args.threads)
    params = load_params()
    modality = task_modality(params, args.task)
    spec = dict(params["train"]["model"][modality.name])
    labels = list(task_params(params, args.task)["labels"])
    table = Path(f"data/{args.task}/augmented.parquet")
    key = hashlib.sha256(json.dumps([file_md5(table), spec], sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(f"models/{args.task}/study/features/{key}.safetensors")
    if not cache.is_file():
        raise SystemExit(f"{cache}: no cached features for this data and spec (run `make run` first)")
    frame = read_parquet(table)
    data = split_data(frame, modality, labels)
    kwargs = {"metric": "macro_f1", "patience": params["train"]["patience"], "device": torch.device("cpu"),
              "feature_batch_size": params["train"]["feature_batch_size"], "feature_cache": cache}
    head, probe = HeadStrategy(modality, spec, data, **kwargs), ProbeStrategy(modality, spec, data, **kwargs)
    test = frame[frame["split"] == "test"].sort_values("id", kind="stable")
    y_test = test["label"].map({lab: i for i, lab in enumerate(labels)}).to_numpy()
    started = time.perf_counter()
    x_test = torch.from_numpy(batched_forward(head.backbone, modality, spec, list(test[modality.payload_column]),
                                              head.backbone, batch_size=kwargs["feature_batch_size"],
                                              device=torch.device("cpu")))
    print(f"{args.task}: {len(data.train_labels)} train, {len(data.val_labels)} val, {len(test)} test rows; "
          f"test features {time.perf_counter() - started:.0f} s")
    print(f"{'setting':58} {'val F1':>7} {'test F1':>8} {'best epoch':>10}")
    for hidden, lr in itertools.product([0, 256], [1e-3, 1e-2]):
        hp = {"lr": lr, "batch_size": 64, "weight_decay": 1e-2, "max_epochs": 30, "head_hidden": hidden,
              "dropout": 0.1, "lr_schedule": "cosine"}
        result = head.fit(hp, lambda e, m: None, seed=0)
        result.model.head.eval()
        with torch.inference_mode():
            pred = result.model.head(x_test).argmax(1).numpy()
        print(f"{f'head hidden={hidden} lr={lr:g} (early stopped, patience {head.patience})':58} "
              f"{result.best_metric:7.4f} {f1_score(y_test, pred, average='macro'):8.4f} {result.best_epoch:10d}")
    for l2 in (1e-5, 1e-4, 1e-3, 3e-3):
        result = probe.fit({"l2": l2, "max_iter": 500, "head_hidden": 0, "dropout": 0.0}, lambda e, m: None, seed=0)
        with torch.inference_mode():
            pred = result.model.head(x_test).argmax(1).numpy()
        print(f"{f'probe l2={l2:g} (L-BFGS to convergence)':58} {result.best_metric:7.4f} "
              f"{f1_score(y_test, pred, average='macro'):8.4f} {'-':>10}")


if __name__ == "__main__":
    main()
