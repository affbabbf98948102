"""Feature extraction throughput: our bf16-autocast path vs a plain fp32 loop, side by side.

The `head` strategy spends most of its time here, so this is the number that decides CPU run time.

    .venv/bin/python benchmarks/feature_extraction.py [--n 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from stages.modalities import get_modality
    from stages.model import batched_forward, to_device
    from tests.conftest import png_bytes

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rng = np.random.default_rng(0)
    words = "the bank said profits rose as the market fell and the minister spoke about election plans".split()
    cases = {
        "image efficientnet_lite0 @64px": (get_modality("image"), {"backbone": "efficientnet_lite0", "image_size": 64},
                                           [png_bytes(value=int(v)) for v in rng.integers(0, 255, args.n)]),
        "text minilm_l6 @128 tokens": (get_modality("text"), {"backbone": "minilm_l6", "max_length": 128, "pooling": "mean"},
                                       [" ".join(rng.choice(words, 160)) for _ in range(args.n)]),
    }
    print(f"{'case':34} {'ours bf16 /s':>13} {'plain fp32 /s':>14} {'ratio':>7}")
    for name, (modality, spec, payloads) in cases.items():
        backbone = modality.build_backbone(spec, pretrained=True).eval()
        batched_forward(backbone, modality, spec, payloads[:32], backbone, batch_size=32, device=device)  # warm-up

        start = time.perf_counter()
        ours = batched_forward(backbone, modality, spec, payloads, backbone, batch_size=128, device=device)
        ours_rate = len(payloads) / (time.perf_counter() - start)

        start = time.perf_counter()
        plain = []
        with torch.no_grad():
            for i in range(0, len(payloads), 128):
                plain.append(backbone(to_device(modality.to_batch(payloads[i:i + 128], spec, backbone), device)).numpy())
        plain_rate = len(payloads) / (time.perf_counter() - start)
        cosine = float(np.mean(np.sum(ours * np.concatenate(plain), 1) /
                               (np.linalg.norm(ours, axis=1) * np.linalg.norm(np.concatenate(plain), axis=1))))
        print(f"{name:34} {ours_rate:13.1f} {plain_rate:14.1f} {ours_rate / plain_rate:6.2f}x  (mean cosine {cosine:.4f})")


if __name__ == "__main__":
    main()
