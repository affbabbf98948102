"""CPU precision: bf16 autocast vs plain fp32, side by side, for the layers and encoders the pipeline runs.

`stages.model.autocast` uses bf16 on CPU only where the CPU has bf16 instructions (AVX512-BF16 or AMX);
elsewhere oneDNN emulates bf16 and autocast costs instead of saving. This prints both and the ratio, and
which one the pipeline picks on this machine.

    .venv/bin/python benchmarks/precision.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def rate(fn, repeats: int) -> float:
    """Best-of-`repeats` calls per second after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return 1.0 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from stages.modalities import get_modality
    from stages.model import amp_dtype, cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    text, image = get_modality("text"), get_modality("image")
    minilm_spec = {"backbone": "minilm_l6", "max_length": 128, "pooling": "mean"}
    minilm = text.build_backbone(minilm_spec, pretrained=True).eval()
    effnet = image.build_backbone({"backbone": "efficientnet_lite0", "image_size": 64}, pretrained=True).eval()
    tokens = minilm.tokenizer(["the minister said the market fell as profits rose " * 12] * 32, truncation=True,
                              max_length=128, padding=True, return_tensors="pt")
    cases = {
        "Linear 384->1536, batch 512": (torch.nn.Linear(384, 1536), lambda m: m(torch.randn(512, 384))),
        "Conv 3x3 32->32 @28px, batch 128": (torch.nn.Conv2d(32, 32, 3, padding=1),
                                             lambda m: m(torch.randn(128, 32, 28, 28))),
        "MiniLM-L6 @128 tokens, batch 32": (minilm, lambda m: m(dict(tokens))),
        "EfficientNet-Lite0 @64px, batch 32": (effnet, lambda m: m(torch.randn(32, 3, 64, 64))),
    }
    print(f"native bf16 on this CPU: {cpu_has_native_bf16()}; the pipeline's CPU autocast dtype: {amp_dtype(cpu)}")
    print(f"{'case':36} {'fp32 calls/s':>13} {'bf16 calls/s':>13} {'bf16/fp32':>10}")
    for name, (module, call) in cases.items():
        results = {}
        for label, context in (("fp32", contextlib.nullcontext), ("bf16", lambda: torch.autocast("cpu", torch.bfloat16))):
            def run(module=module, call=call, context=context):
                with torch.inference_mode(), context():
                    call(module)
            results[label] = rate(run, args.repeats)
        print(f"{name:36} {results['fp32']:13.2f} {results['bf16']:13.2f} {results['bf16'] / results['fp32']:9.2f}x")


if __name__ == "__main__":
    main()
