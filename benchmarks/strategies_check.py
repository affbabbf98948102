"""One short trial of each text strategy (head, lora, full) through `stages.training`'s own strategy classes.

A check of the training path on a device rather than a benchmark against a baseline: on a GPU machine it shows
that every strategy trains on CUDA (bf16 autocast, TF32, fused AdamW), how long one trial takes, its training
throughput and peak GPU memory. The data is synthetic but learnable (each class has its own vocabulary mixed
into shared filler words), so a working strategy reaches a high validation score within two epochs.
`benchmarks/gpu_check.sh` runs it after the throughput benchmark.

    .venv/bin/python benchmarks/strategies_check.py [--device cpu|cuda] [--n-train 512] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_CLASSES = 4
MIN_F1 = 0.8  # chance is 0.25
HP = {  # one fixed point of each strategy's search space in params.yaml
    "head": {"lr": 1e-2, "batch_size": 64, "weight_decay": 1e-4, "head_hidden": 0, "dropout": 0.1},
    "lora": {"lr": 3e-3, "batch_size": 32, "weight_decay": 1e-4, "head_hidden": 0, "dropout": 0.1,
             "lora_r": 8, "lora_alpha": 16},
    "full": {"lr": 1e-4, "batch_size": 32, "weight_decay": 1e-4, "head_hidden": 0, "dropout": 0.1},
}


def synthetic(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    filler = "the a of to and in for on with as by at from that this it was is said will".split()
    topics = [f"alpha{i} beta{i} gamma{i} delta{i} epsilon{i} zeta{i}".split() for i in range(N_CLASSES)]
    labels = rng.integers(0, N_CLASSES, n)
    texts = [" ".join(rng.choice(filler + topics[y] * 2, 60)) for y in labels]
    return texts, labels.astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when present")
    parser.add_argument("--strategies", default="head,lora,full")
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-val", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="per trial (head: 10x)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    from stages.modalities import get_modality
    from stages.model import configure_threads
    from stages.training.strategy import SplitData, get_strategy

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device visible to torch")
    configure_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as stages.train sets
    spec = {"backbone": "minilm_l6", "max_length": args.max_length, "pooling": "mean", "lora_targets": ["query", "value"]}
    train_x, train_y = synthetic(args.n_train, seed=0)
    val_x, val_y = synthetic(args.n_val, seed=1)
    data = SplitData(train_x, train_y, val_x, val_y)
    modality = get_modality("text")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; {args.n_train} train / {args.n_val} val texts, seq <= {args.max_length}, "
          f"{args.epochs} epochs per trial (head: {10 * args.epochs})")
    # untimed warm-up (CUDA context, cuBLAS handles, kernel selection, the peft import), so that the first
    # strategy timed does not pay for everyone
    started = time.perf_counter()
    import peft  # noqa: F401

    get_strategy("full")(modality, spec, SplitData(train_x[:64], train_y[:64], val_x[:16], val_y[:16]),
                         metric="macro_f1", patience=1, device=device, feature_batch_size=128).fit(
        {**HP["full"], "max_epochs": 1}, lambda epoch, metrics: None, seed=0)
    print(f"warm-up (one small full fine-tune epoch, untimed below): {time.perf_counter() - started:.1f}s")
    print(f"{'strategy':9} {'setup s':>8} {'train s':>8} {'samples/s':>10} {'val macro-F1':>13} {'peak GiB':>9}")
    failed = []
    for strategy_name in [s for s in args.strategies.split(",") if s]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        strategy = get_strategy(strategy_name)(modality, spec, data, metric="macro_f1", patience=10 * args.epochs,
                                               device=device, feature_batch_size=128)
        setup_s = time.perf_counter() - started
        epochs: list[dict] = []
        started = time.perf_counter()
        # a head trains in milliseconds per epoch on cached features: give it 10x the epochs
        max_epochs = args.epochs * (10 if strategy_name == "head" else 1)
        result = strategy.fit({**HP[strategy_name], "max_epochs": max_epochs},
                              lambda epoch, metrics: epochs.append(metrics), seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        print(f"{strategy_name:9} {setup_s:8.1f} {train_s:8.1f} {args.n_train * result.epochs_run / train_s:10.1f} "
              f"{result.best_metric:13.3f} {peak:9.2f}", flush=True)
        if result.best_metric < MIN_F1:
            failed.append(strategy_name)
        del strategy, result
    if failed:
        raise SystemExit(f"error: {failed}: validation macro-F1 below {MIN_F1} on separable synthetic data")


if __name__ == "__main__":
    main()
