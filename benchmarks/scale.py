"""clean at scale: the `local` engine vs `ray` (Ray Data) on synthetic short texts with planted near duplicates.

Each engine runs in its own fresh process (so peak memory is that run's), on the same texts, through the same
`stages.clean.clean` core and the text params in params.yaml (normalisation, markup, personal data, exact and
near duplicates). Reported: docs/s, peak RSS of the driver process and of the largest Ray worker (sampled every
0.2 s with psutil), precision (a row marked as a near duplicate of a row from another base text is wrong)
and recall (planted pairs whose exact Jaccard reaches the threshold that end in one cluster), and whether both engines produced identical kept/quarantined frames and metrics.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py --docs 200000 [--planted 20000] [--num-cpus 2]

Texts are random word sequences (6-30 words from a 5000-word vocabulary), so chance near duplicates are
absent and the planted pairs are the ground truth; each planted copy gets 1-3 word edits, a case change or a
punctuation change (benchmarks/dedup.py's `variant`).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/dedup.py: its `variant`

from dedup import variant  # noqa: E402

from stages.clean import CleanParams, clean  # noqa: E402
from stages.common import build, content_id, load_params  # noqa: E402
from stages.dedup import jaccard_pairs, shingles  # noqa: E402
from stages.engine import EngineParams, open_engine  # noqa: E402
from stages.modalities import get_modality, modality_section  # noqa: E402


def corpus(n_docs: int, n_planted: int, seed: int) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """A raw acquire-like table of `n_docs` texts, `n_planted` of them edited copies; the planted (id, id) pairs."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
                  for _ in range(5000)]
    bases = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(6, 30))) for _ in range(n_docs - n_planted)]
    texts = list(bases)
    sources = [rng.randrange(len(bases)) for _ in range(n_planted)]
    texts += [variant(bases[s], rng, vocabulary) for s in sources]
    ids = [content_id("scale", str(i)) for i in range(len(texts))]
    frame = pd.DataFrame({"id": ids, "modality": "text", "text": texts,
                          "label": [rng.choice(["a", "b"]) for _ in texts], "source": "synthetic"})
    planted = [(ids[s], ids[len(bases) + k]) for k, s in enumerate(sources)]
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True), planted


class PeakMemory:
    """Peak RSS of this process and of its largest descendant (Ray's workers), sampled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.driver = 0
        self.worker = 0
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        import psutil

        driver = self.me.memory_info().rss
        workers = []
        for child in self.me.children(recursive=True):
            try:
                workers.append(child.memory_info().rss)
            except psutil.Error:
                continue
        self.driver = max(self.driver, driver)
        self.worker = max(self.worker, max(workers, default=0))
        self.total = max(self.total, driver + sum(workers))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run_one(args: argparse.Namespace) -> dict:
    frame, planted = corpus(args.docs, args.planted, args.seed)
    params = load_params()
    cp = build(CleanParams, params["clean"], "clean")
    text = get_modality("text")
    values = text.clean_params(modality_section(cp.by_modality, text, "clean.by_modality"))
    with PeakMemory() as memory:
        with open_engine(EngineParams(kind=args.run_one, address=None, num_cpus=args.num_cpus)) as engine:
            if args.run_one == "ray":  # Ray's start-up is not the engine's throughput: warm its workers first
                clean(frame.head(2000), text, values, exact_dedup=True, near_dedup="mark", engine=engine)
            start = time.perf_counter()
            result = clean(frame, text, values, exact_dedup=True, near_dedup="mark", engine=engine)
            seconds = time.perf_counter() - start
    kept = result.kept
    found = {tuple(sorted(p)) for p in zip(kept["id"], kept["near_duplicate_of"]) if isinstance(p[1], str)}
    # ground truth: planted pairs whose exact char-5-gram Jaccard reaches the threshold (clusters: pair to root)
    nd = values.near_duplicates
    by_id = dict(zip(frame["id"], frame["text"]))
    a, b = zip(*planted)
    hashes, offsets = shingles([by_id[i] for i in a] + [by_id[i] for i in b], ngram=nd.ngram)
    n = len(planted)
    similarity = jaccard_pairs(hashes, offsets, np.stack([np.arange(n), np.arange(n) + n], axis=1))
    truth = {tuple(sorted(p)) for p, s in zip(planted, similarity) if s >= nd.threshold}
    root = dict(zip(kept["id"], kept["cluster_id"]))
    family = {copy: base for base, copy in planted}  # a found link is right when both rows come from one base text
    recalled = sum(1 for x, y in truth if root.get(x) is not None and root.get(x) == root.get(y))
    digest = hashlib.sha256(pd.util.hash_pandas_object(kept.astype(str), index=False).to_numpy().tobytes()
                            + json.dumps(result.metrics, sort_keys=True).encode()).hexdigest()[:16]
    return {"engine": args.run_one, "docs": len(frame), "seconds": round(seconds, 2),
            "docs_per_s": round(len(frame) / seconds), "driver_peak_mib": memory.driver >> 20,
            "worker_peak_mib": memory.worker >> 20, "total_peak_mib": memory.total >> 20,
            "near_pairs": len(found), "truth_pairs": len(truth),
            "precision": round(sum(1 for x, y in found if family.get(x, x) == family.get(y, y)) / max(len(found), 1), 4),
            "recall": round(recalled / max(len(truth), 1), 4), "result_sha": digest,
            "exact_duplicates": result.metrics["exact_duplicate_clusters"],
            "near_clusters": result.metrics["near_duplicate_clusters"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--planted", type=int, default=None, help="default: 10%% of --docs")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--run-one", choices=["local", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.planted = args.docs // 10 if args.planted is None else args.planted
    if args.run_one:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for engine in args.engines.split(","):
        out = subprocess.run([sys.executable, __file__, "--docs", str(args.docs), "--planted", str(args.planted),
                              "--num-cpus", str(args.num_cpus), "--seed", str(args.seed), "--run-one", engine],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.docs} docs, {args.planted} planted near duplicates, ray: local instance with {args.num_cpus} CPUs")
    print(f"{'engine':6} {'seconds':>8} {'docs/s':>8} {'driver MiB':>10} {'worker MiB':>10} {'total MiB':>9} "
          f"{'pairs':>7} {'precision':>9} {'recall':>7} {'result sha':>17}")
    for r in rows:
        print(f"{r['engine']:6} {r['seconds']:8.1f} {r['docs_per_s']:8d} {r['driver_peak_mib']:10d} "
              f"{r['worker_peak_mib']:10d} {r['total_peak_mib']:9d} {r['near_pairs']:7d} {r['precision']:9.4f} "
              f"{r['recall']:7.4f} {r['result_sha']:>17}")
    print("identical results:", len({r["result_sha"] for r in rows}) == 1)


if __name__ == "__main__":
    main()
