"""Image near-duplicate detection (pHash candidates + thumbnail-correlation check) on the bundled animal data.

Takes `--n` originals from the bundled animal-shape-mnist drawings (exact duplicates removed), adds one
transformed copy of every third original (2x resize, a slight rotation of up to 5 degrees, or a
brightness change of up to 20%), and runs `stages.dedup.image_near_duplicates` with the params.yaml
settings. Ground truth is the planted (original, copy) pairs; a found pair between two distinct
originals counts against precision, even though some of those drawings are near-identical.
One thread, so images/s is per core:

    .venv/bin/python benchmarks/dedup_images.py [--n 6000]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse
import io
import time
from pathlib import Path

import numpy as np
import yaml


def transformed(payload: bytes, kind: int, rng: np.random.Generator) -> bytes:
    from PIL import Image, ImageEnhance

    with Image.open(io.BytesIO(payload)) as image:
        image = image.convert("L")
        if kind == 0:
            image = image.resize((image.width * 2, image.height * 2), Image.Resampling.BILINEAR)
        elif kind == 1:
            background = int(np.asarray(image)[0, 0])
            image = image.rotate(float(rng.uniform(-5, 5)), resample=Image.Resampling.BILINEAR, fillcolor=background)
        else:
            image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from stages.acquire import SOURCES
    from stages.dedup import image_near_duplicates
    from stages.modalities import get_modality

    settings = yaml.safe_load(open("params.yaml"))["clean"]["by_modality"]["image"]["near_duplicates"]
    modality = get_modality("image")
    items = SOURCES["animal_shape_mnist"]({}, modality, Path("data/animals/source")).items  # packaged: folder unread
    seen, originals = set(), []
    for item in items:
        digest = modality.content_hash(item.payload)
        if digest not in seen:
            seen.add(digest)
            originals.append(item.payload)
    originals = originals[:args.n]
    rng = np.random.default_rng(args.seed)
    sources = list(range(0, len(originals), 3))
    payloads = originals + [transformed(originals[s], k % 3, rng) for k, s in enumerate(sources)]
    planted = {(s, len(originals) + k) for k, s in enumerate(sources)}
    kinds = {(s, len(originals) + k): ("resize", "rotate", "brightness")[k % 3] for k, s in enumerate(sources)}

    start = time.perf_counter()
    pairs, _ = image_near_duplicates(payloads, **settings)
    elapsed = time.perf_counter() - start
    found = {(int(i), int(j)) for i, j in pairs}
    hit = found & planted
    print(f"{len(payloads)} images ({len(originals)} originals + {len(planted)} transformed copies), settings {settings}")
    print(f"images/s/core {len(payloads) / elapsed:.0f}  precision {len(hit) / max(len(found), 1):.4f}  "
          f"recall {len(hit) / len(planted):.4f}  (found {len(found)} pairs, {len(found - planted)} between originals)")
    for kind in ("resize", "rotate", "brightness"):
        wanted = {p for p, k in kinds.items() if k == kind}
        print(f"  recall {kind:10} {len(wanted & found) / len(wanted):.4f}")


if __name__ == "__main__":
    main()
