"""Serving throughput: the champion and its compressed variant over HTTP (`mlflow models serve` on 127.0.0.1) and
in-process (`stages.predict`'s path: `mlflow.pyfunc.load_model` + `predict`), side by side.

    .venv/bin/python benchmarks/serve.py                         # news, after `make run`
    .venv/bin/python benchmarks/serve.py animals --requests 50 --seconds 20

For each model, path and batch size (1 and 32 test rows, cycled) it sends a bounded loop of requests, one at a
time (at most `--requests`, and none started after `--seconds`), after one warm-up request, and prints requests/s,
rows/s and p50/p95 latency per request. Reads the registry in `sqlite:///mlflow.db` and `data/<task>/augmented.parquet`
from `--repo`; writes nothing there. CPU figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serving_utils import mlflow_serve  # noqa: E402  (the same server start-up the pipeline tests use)

BATCHES = (1, 32)


def measure(call: Callable[[int], None], *, requests: int, seconds: float) -> list[float]:
    """Per-request latencies (s) of `call(i)`, after one warm-up call: at most `requests`, none started late."""
    call(0)
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    while len(latencies) < requests and time.monotonic() < stop:
        started = time.perf_counter()
        call(len(latencies))
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?", default="news")
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--aliases", nargs="+", default=["champion", "champion-compressed"])
    parser.add_argument("--paths", nargs="+", choices=["http", "in-process"], default=["http", "in-process"])
    parser.add_argument("--requests", type=int, default=30, help="at most this many timed requests per cell")
    parser.add_argument("--seconds", type=float, default=30.0, help="no request starts after this many seconds")
    args = parser.parse_args()

    import mlflow
    import pandas as pd

    from stages.common import offline_env, read_parquet

    offline_env()
    mlflow.set_tracking_uri(f"sqlite:///{args.repo.resolve() / 'mlflow.db'}")
    frame = read_parquet(args.repo / "data" / args.task / "augmented.parquet")
    column = "image" if "image" in frame.columns else "text"
    pool = list(frame[frame["split"] == "test"].sort_values("id", kind="stable")[column])
    if not pool:
        raise SystemExit(f"error: {args.repo}/data/{args.task}/augmented.parquet: no test rows")

    def rows(batch: int, i: int) -> list:
        return [pool[(i * batch + k) % len(pool)] for k in range(batch)]

    def as_json(values: list) -> bytes:
        data = [[base64.b64encode(v).decode() if isinstance(v, bytes) else v] for v in values]
        return json.dumps({"dataframe_split": {"columns": [column], "data": data}}).encode()

    print(f"task {args.task}: {len(pool)} test rows, up to {args.requests} requests or {args.seconds:g} s per cell, "
          f"one at a time\n")
    print("| model | path | batch | requests | requests/s | rows/s | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for alias in args.aliases:
        uri = f"models:/{args.task}-classifier@{alias}"
        cells: list[tuple[str, int, list[float]]] = []
        with (mlflow_serve(args.repo, uri, timeout=300) if "http" in args.paths else contextlib.nullcontext()) as url:
            for batch in BATCHES if "http" in args.paths else ():
                bodies = [as_json(rows(batch, i)) for i in range(args.requests + 1)]

                def post(i: int, bodies: list[bytes] = bodies) -> None:
                    request = urllib.request.Request(url + "/invocations", data=bodies[i % len(bodies)],
                                                     headers={"Content-Type": "application/json"}, method="POST")
                    with urllib.request.urlopen(request, timeout=600) as response:
                        response.read()

                cells.append(("HTTP", batch, measure(post, requests=args.requests, seconds=args.seconds)))
        model = mlflow.pyfunc.load_model(uri) if "in-process" in args.paths else None
        for batch in BATCHES if model is not None else ():
            frames = [pd.DataFrame({column: rows(batch, i)}) for i in range(args.requests + 1)]
            cells.append(("in-process", batch, measure(lambda i, frames=frames: model.predict(frames[i % len(frames)]),
                                                      requests=args.requests, seconds=args.seconds)))
        for path, batch, latencies in cells:
            total = sum(latencies)
            p50, p95 = np.percentile(np.array(latencies) * 1000, [50, 95])
            print(f"| `@{alias}` | {path} | {batch} | {len(latencies)} | {len(latencies) / total:.1f} | "
                  f"{batch * len(latencies) / total:.1f} | {p50:.0f} | {p95:.0f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
