"""Whole-document MiniLM encoding on CPU: one padded batch vs length groups, side by side on the same articles.

A news article read as up to 4 windows of 256 tokens ends in a short window; padded to the batch's longest,
those windows cost as much as full ones. `TextBackbone.pool_by_length` (the CPU path) encodes rows of similar
length together, each group cut to its own longest row. Prints both wall times, the ratio and the largest
difference between the two feature matrices. Reads the pipeline's table (`make run` first).

    .venv/bin/python benchmarks/length_groups.py [--rows 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="data/news/augmented.parquet")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import pandas as pd
    import torch

    from stages.common import load_params
    from stages.modalities import get_modality

    torch.set_num_threads(args.threads)
    text = get_modality("text")
    spec = dict(load_params()["train"]["model"]["text"])
    backbone = text.build_backbone(spec, pretrained=True).eval()
    docs = list(pd.read_parquet(args.table).sort_values("id")["text"][:args.rows])
    batch = text.to_batch(docs, spec, backbone)
    inputs = {k: v for k, v in batch.items() if k != "document"}
    real, padded = int(inputs["attention_mask"].sum()), inputs["attention_mask"].numel()
    print(f"{len(docs)} documents, {len(inputs['input_ids'])} windows of {inputs['input_ids'].shape[1]} tokens: "
          f"{real} real tokens of {padded} ({1 - real / padded:.0%} padding); {args.threads} threads")
    with torch.inference_mode():
        backbone.pool({k: v[:4] for k, v in inputs.items()})  # warm-up
        timings = {}
        for name, fn in (("padded batch", backbone.pool), ("length groups", backbone.pool_by_length)):
            start = time.perf_counter()
            timings[name] = (fn(inputs), time.perf_counter() - start)
    (a, ta), (b, tb) = timings["padded batch"], timings["length groups"]
    print(f"  padded batch   {ta:7.2f} s\n  length groups  {tb:7.2f} s   x{ta / tb:.2f} faster, "
          f"max |difference| {float((a - b).abs().max()):.1e}")


if __name__ == "__main__":
    main()
