"""Audio: test macro-F1 of the log-mel CNN (strategy `scratch`) beside the `small_cnn` baseline, side by side.

Scenarios (the Free Spoken Digit Dataset, FSDD, Z. Jackson et al., CC BY-SA 4.0, read from
`../shared/data/fsdd/recordings` and never copied; skipped when absent):

- `fsdd_speakers`: train on four speakers, test on the other two (theo, yweweler); val is 15% of the train
  speakers' recordings.
- `fsdd_takes`: a seeded random 70/15/15 split of all 3,000 recordings.
- `sim_to_real` (without and with augmentation): trained only on the synthetic default task (`tasks.digits`,
  split by voice), scored on all 3,000 real FSDD recordings.

Every row goes through the clean stage's per-row rules (`clean.by_modality.audio`), the model is the study's
first scratch trial (`train.scratch_model.audio` with the `default` values of `train.search.scratch`), the baseline
`evaluate.baselines.small_cnn` on the same rows.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/audio.py [--scenarios fsdd_speakers fsdd_takes sim_to_real]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
TEST_SPEAKERS = ("theo", "yweweler")


def load_fsdd(audio: Any, clean_params: Any) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(FSDD.glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        payload, reason = audio.normalise(path.read_bytes(), clean_params)
        if reason is None:
            rows.append({"audio": payload, "label": int(digit), "speaker": speaker, "take": int(take)})
    return rows


def synthetic(audio: Any, params: dict[str, Any], clean_params: Any) -> list[dict[str, Any]]:
    from stages.modalities.audio import spoken_words

    task = params["tasks"]["digits"]
    made = spoken_words(task["source"], seed=params["base"]["seed"])
    words = task["labels"]
    rows = []
    for row in made.rows:
        payload, reason = audio.normalise(row["payload"], clean_params)
        if reason is None:
            rows.append({"audio": payload, "label": words.index(row["label"]), "speaker": row["voice"], "take": 0})
    return rows


def fit_and_score(audio: Any, params: dict[str, Any], train: list, val: list, tests: dict[str, list], *,
                  seed: int, copies: int) -> dict[str, Any]:
    import torch

    from stages.baselines import run_baseline
    from stages.model import choose_device, predict_logits
    from stages.training.finetune import ScratchStrategy
    from stages.training.loop import score
    from stages.training.strategy import SplitData

    if copies:
        augment_params = audio.augment_params(params["augment"]["by_modality"]["audio"])
        extra = []
        for copy in range(copies):
            payloads = audio.augment([r["audio"] for r in train], augment_params, seed=seed + copy)
            extra += [{**r, "audio": p} for r, p in zip(train, payloads)]
        train = train + extra
    spec = dict(params["train"]["scratch_model"]["audio"])
    search = params["train"]["search"]["scratch"]
    hp = {k: (v["value"] if v["type"] == "fixed" else v["default"]) for k, v in search.items()}
    data = SplitData([r["audio"] for r in train], np.array([r["label"] for r in train]),
                     [r["audio"] for r in val], np.array([r["label"] for r in val]))
    device = choose_device()
    strategy = ScratchStrategy(audio, spec, data, metric="macro_f1", patience=params["train"]["patience"],
                               device=device, feature_batch_size=128)
    started = time.perf_counter()
    torch.manual_seed(seed)
    fit = strategy.fit(hp, lambda epoch, metrics: None, seed=seed)
    out: dict[str, Any] = {"train_rows": len(train), "val_macro_f1": round(fit.best_metric, 4),
                           "best_epoch": fit.best_epoch, "train_s": round(time.perf_counter() - started, 1)}
    baseline_params = params["evaluate"]["baselines"]["small_cnn"]
    x_train = audio.baseline_input(data.train_payloads)
    for name, rows in tests.items():
        y = np.array([r["label"] for r in rows])
        logits = predict_logits(fit.model, audio, spec, [r["audio"] for r in rows], batch_size=128, device=device)
        predictions, _ = run_baseline("small_cnn", x_train, data.train_labels,
                                      audio.baseline_input([r["audio"] for r in rows]), params=baseline_params,
                                      seed=seed)
        out[name] = {"rows": len(rows), "model_macro_f1": round(score("macro_f1", y, logits.argmax(1)), 4),
                     "small_cnn_macro_f1": round(score("macro_f1", y, predictions), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=["fsdd_speakers", "fsdd_takes", "sim_to_real"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    from stages.modalities import get_modality

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    audio = get_modality("audio")
    clean_params = audio.clean_params(params["clean"]["by_modality"]["audio"])
    rng = np.random.default_rng(args.seed)
    fsdd = load_fsdd(audio, clean_params) if FSDD.is_dir() else None
    if fsdd is None:
        print(f"FSDD not found at {FSDD}: only the synthetic task can be measured")
    results: dict[str, Any] = {}
    for scenario in args.scenarios:
        started = time.perf_counter()
        if scenario == "fsdd_speakers" and fsdd:
            pool = [r for r in fsdd if r["speaker"] not in TEST_SPEAKERS]
            order = rng.permutation(len(pool))
            n_val = int(0.15 * len(pool))
            val, train = [pool[i] for i in order[:n_val]], [pool[i] for i in order[n_val:]]
            results[scenario] = fit_and_score(audio, params, train, val,
                                              {"test": [r for r in fsdd if r["speaker"] in TEST_SPEAKERS]},
                                              seed=args.seed, copies=0)
        elif scenario == "fsdd_takes" and fsdd:
            order = rng.permutation(len(fsdd))
            n = len(fsdd)
            cut = [int(0.7 * n), int(0.85 * n)]
            train, val, test = ([fsdd[i] for i in part] for part in np.split(order, cut))
            results[scenario] = fit_and_score(audio, params, train, val, {"test": test}, seed=args.seed, copies=0)
        elif scenario == "sim_to_real":
            rows = synthetic(audio, params, clean_params)
            voices = sorted({r["speaker"] for r in rows})
            held = set(rng.choice(voices, size=max(1, len(voices) // 6), replace=False))
            train = [r for r in rows if r["speaker"] not in held]
            val = [r for r in rows if r["speaker"] in held]
            tests = {"synthetic_val_voices": val, **({"fsdd_all": fsdd} if fsdd else {})}
            for copies in (0, 1):
                results[f"sim_to_real_augment_{copies}"] = fit_and_score(audio, params, train, val, tests,
                                                                         seed=args.seed, copies=copies)
        results.setdefault("wall_s", {})[scenario] = round(time.perf_counter() - started, 1)
        print(json.dumps({k: v for k, v in results.items() if k.startswith(scenario) or k == "wall_s"}, indent=1),
              flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
