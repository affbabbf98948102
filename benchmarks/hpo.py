"""HPO efficiency: the same trial budget with pruning + early stopping on, then off, side by side.

Uses the `head` strategy exactly as `stages.train` runs it (HeadStrategy, run_trial, make_pruner, the search
space, patience and pruner from params.yaml) on the default tasks' augmented tables, which `make run` builds.
Backbone features are extracted once per task and cached under `.cache/benchmarks/`, so both arms train heads
on identical features with the same TPE seed. The "off" arm uses no pruner and patience = the largest
`max_epochs` in the search space, so every trial runs to its sampled `max_epochs`.

Target (issue 5): best validation metric within 0.5 points of the unpruned best, using <= 40% of its trial-epochs.

    .venv/bin/python benchmarks/hpo.py [--tasks animals news] [--n-trials 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_POINTS = 0.5
TARGET_EPOCH_SHARE = 0.40


def run_arm(strategy, space: dict, *, pruner, seed: int, n_trials: int) -> dict:
    """One study of `n_trials`; counts every epoch any trial trains (pruned ones included)."""
    import optuna

    from stages.training.study import run_trial

    epochs = 0

    def count(epoch: int, metrics: dict) -> None:
        nonlocal epochs
        epochs += 1

    def objective(trial: optuna.Trial) -> float:
        return run_trial(trial, strategy, space, seed=seed, on_epoch=count).best_metric

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    states = [t.state.name for t in study.trials]
    return {"best": study.best_value, "epochs": epochs, "wall_s": time.perf_counter() - started,
            "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED")}


def benchmark_task(params: dict, task: str, *, data_path: Path, cache_dir: Path, n_trials: int) -> dict:
    import optuna
    import torch

    from stages.common import read_parquet
    from stages.modalities import task_modality
    from stages.train import PrunerParams
    from stages.training.frozen import HeadStrategy
    from stages.training.strategy import split_data
    from stages.training.study import make_pruner

    train = params["train"]
    seed = params["base"]["seed"]
    modality = task_modality(params, task)
    spec = dict(train["model"][modality.name])
    space = train["search"]["head"]
    data = split_data(read_parquet(data_path), modality, params["tasks"][task]["labels"])
    key = hashlib.sha256(json.dumps({"data": data_path.stat().st_mtime_ns, "size": data_path.stat().st_size,
                                     "spec": spec}, sort_keys=True).encode()).hexdigest()[:12]
    cache = cache_dir / f"hpo-{task}-{key}.safetensors"
    device = torch.device("cpu")

    def strategy(patience: int) -> HeadStrategy:
        return HeadStrategy(modality, spec, data, metric=train["metric"], patience=patience, device=device,
                            feature_batch_size=train["feature_batch_size"], feature_cache=cache)

    started = time.perf_counter()
    on = strategy(train["patience"])  # extracts (or loads) the features; the second arm loads them from the cache
    features_s = time.perf_counter() - started
    no_early_stop = int(space["max_epochs"]["high"])  # patience that never triggers
    off = strategy(no_early_stop)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return {
        "features_s": features_s,
        "rows": (len(data.train_labels), len(data.val_labels)),
        "on": run_arm(on, space, pruner=make_pruner(PrunerParams(**train["pruner"])), seed=seed, n_trials=n_trials),
        "off": run_arm(off, space, pruner=optuna.pruners.NopPruner(), seed=seed, n_trials=n_trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=None, help="default: params.yaml `run`")
    parser.add_argument("--n-trials", type=int, default=None, help="default: params.yaml train.n_trials")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default="data/{task}/augmented.parquet", help="table per task (built by `make run`)")
    parser.add_argument("--cache-dir", default=".cache/benchmarks")
    args = parser.parse_args()

    import torch

    from stages.common import load_params

    torch.set_num_threads(args.threads)
    params = load_params()
    tasks = args.tasks or list(params["run"])
    n_trials = args.n_trials or int(params["train"]["n_trials"])
    pruner = params["train"]["pruner"]
    print(f"head strategy, {n_trials} trials per arm, {args.threads} torch threads; "
          f"on = {pruner['kind']} pruner (startup {pruner['n_startup_trials']}, warmup {pruner['n_warmup_steps']}) "
          f"+ patience {params['train']['patience']}; off = no pruner, no early stop")
    results = {}
    for task in tasks:
        data_path = Path(args.data.format(task=task))
        if not data_path.is_file():
            raise SystemExit(f"error: {data_path}: not found; build it first with `make run` (or `dvc repro augment@{task}`)")
        results[task] = benchmark_task(params, task, data_path=data_path, cache_dir=Path(args.cache_dir),
                                       n_trials=n_trials)

    metric = params["train"]["metric"]
    print(f"\n{'task':8} {'arm':4} {'best val ' + metric:>18} {'complete':>8} {'pruned':>6} {'trial-epochs':>12} {'wall s':>7}")
    totals = {"on": [0, 0.0], "off": [0, 0.0]}
    verdicts = []
    for task, r in results.items():
        for arm in ("on", "off"):
            a = r[arm]
            totals[arm][0] += a["epochs"]
            totals[arm][1] += a["wall_s"]
            print(f"{task:8} {arm:4} {a['best']:18.4f} {a['complete']:8d} {a['pruned']:6d} {a['epochs']:12d} {a['wall_s']:7.1f}")
        gap = 100 * (r["off"]["best"] - r["on"]["best"])
        share = r["on"]["epochs"] / max(r["off"]["epochs"], 1)
        ok = gap <= TARGET_POINTS and share <= TARGET_EPOCH_SHARE
        verdicts.append(ok)
        print(f"{task:8} on/off: best {-gap:+.2f} points, trial-epochs {share:.0%}, wall "
              f"{r['on']['wall_s'] / max(r['off']['wall_s'], 1e-9):.0%}  -> {'meets' if ok else 'misses'} target "
              f"(<= {TARGET_POINTS} points below, <= {TARGET_EPOCH_SHARE:.0%} epochs)   "
              f"[{r['rows'][0]} train / {r['rows'][1]} val rows, features {r['features_s']:.1f}s]")
    share = totals["on"][0] / max(totals["off"][0], 1)
    print(f"all      on/off: trial-epochs {totals['on'][0]}/{totals['off'][0]} = {share:.0%}, "
          f"wall {totals['on'][1]:.1f}s/{totals['off'][1]:.1f}s = {totals['on'][1] / max(totals['off'][1], 1e-9):.0%}; "
          f"target met on {sum(verdicts)}/{len(verdicts)} tasks")


if __name__ == "__main__":
    main()
