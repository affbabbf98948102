"""Text near-duplicate detection: our vectorised MinHash + LSH vs a plain datasketch baseline, side by side.

Builds a reproducible corpus of short texts: sentences of the bundled BBC News corpus and SMS messages, plus planted
near-duplicates (1-3 word edits, case and punctuation variants). Both methods see the same texts, the
same shingling (char n-grams of the lower-cased, punctuation-free text), the same number of permutations
and the same threshold. The baseline is datasketch's MinHash with shared permutations and `update_batch`,
indexed and queried with MinHashLSH; ours also verifies every candidate with the exact Jaccard.

Ground truth is exact: every pair with Jaccard >= threshold, found by an all-pairs prefix-filter join
(rare-shingles-first ordering, so the join is exact and still fast). Run on one thread, so docs/s is per core:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dedup.py [--docs 50000] [--threshold 0.7]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: "per core" must mean one core

import argparse
import math
import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from stages.dedup import clusters, shingle_text, shingles, text_near_duplicates

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def base_sentences(n: int, seed: int) -> list[str]:
    """`n` distinct short texts of 6-40 words: BBC News sentences and SMS messages (bundled, read offline)."""
    from stages.acquire import SOURCES
    from stages.modalities import get_modality

    text, unread = get_modality("text"), Path(".")  # packaged sources: no source folder is read
    items = [*SOURCES["bbc_news"]({}, text, unread).items, *SOURCES["sms_spam"]({}, text, unread).items]
    seen, out = set(), []
    for item in sorted(items, key=lambda it: it.source_ref):
        for line in item.payload.splitlines():
            for sentence in _SENTENCE.split(line.strip()):
                words = sentence.split()
                key = shingle_text(sentence)
                if 6 <= len(words) <= 40 and key not in seen:
                    seen.add(key)
                    out.append(" ".join(words))
    random.Random(seed).shuffle(out)
    if len(out) < n:
        raise SystemExit(f"only {len(out)} distinct sentences available, asked for {n}")
    return out[:n]


def variant(text: str, rng: random.Random, vocabulary: list[str]) -> str:
    """A planted near-duplicate: 1-3 word edits, or a case/punctuation variant, or both."""
    words = text.split()
    kind = rng.choice(["edit", "edit", "case", "punct", "edit+case"])
    if "edit" in kind:
        for _ in range(rng.randint(1, 3)):
            op = rng.choice(["sub", "del", "ins"])
            i = rng.randrange(len(words))
            if op == "sub":
                words[i] = rng.choice(vocabulary)
            elif op == "del" and len(words) > 3:
                del words[i]
            else:
                words.insert(i, rng.choice(vocabulary))
    out = " ".join(words)
    if "case" in kind:
        out = rng.choice([out.upper(), out.lower(), out.title()])
    if kind == "punct":
        out = re.sub(r"[,.;:!?'\"]", "", out) + rng.choice(["!", "?", "...", " ."])
    return out


def corpus(n_docs: int, n_planted: int, seed: int) -> tuple[list[str], set[tuple[int, int]]]:
    rng = random.Random(seed)
    bases = base_sentences(n_docs - n_planted, seed)
    vocabulary = sorted({w for s in bases[:2000] for w in s.split()})
    texts = list(bases)
    planted = set()
    for _ in range(n_planted):
        source = rng.randrange(len(bases))
        texts.append(variant(bases[source], rng, vocabulary))
        planted.add((source, len(texts) - 1))
    order = list(range(len(texts)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    shuffled = [texts[old] for old in order]
    return shuffled, {tuple(sorted((position[a], position[b]))) for a, b in planted}


def exact_pairs(token_sets: list[frozenset], threshold: float) -> set[tuple[int, int]]:
    """Every pair with Jaccard >= threshold: prefix filtering (Chaudhuri et al.) plus the length filter."""
    frequency = Counter(t for s in token_sets for t in s)
    rank = {t: r for r, (t, _) in enumerate(sorted(frequency.items(), key=lambda kv: (kv[1], kv[0])))}
    ordered = [sorted(rank[t] for t in s) for s in token_sets]
    index: dict[int, list[int]] = defaultdict(list)
    found = set()
    for doc in sorted(range(len(ordered)), key=lambda d: len(ordered[d])):
        tokens = ordered[doc]
        size = len(tokens)
        prefix = size - math.ceil(threshold * size) + 1
        candidates = set()
        for token in tokens[:prefix]:
            for other in index[token]:
                if len(ordered[other]) >= threshold * size:
                    candidates.add(other)
            index[token].append(doc)
        mine = token_sets[doc]
        for other in candidates:
            theirs = token_sets[other]
            inter = len(mine & theirs)
            if inter / (len(mine) + len(theirs) - inter) >= threshold:
                found.add((min(doc, other), max(doc, other)))
    return found


def run_ours(texts: list[str], args) -> tuple[float, set[tuple[int, int]]]:
    start = time.perf_counter()
    pairs, _ = text_near_duplicates(texts, ngram=args.ngram, num_perm=args.num_perm, bands=args.bands,
                                    threshold=args.threshold, seed=args.seed)
    clusters([f"{i:08d}" for i in range(len(texts))], pairs)  # what clean does next, timed too
    elapsed = time.perf_counter() - start
    return elapsed, {(int(i), int(j)) for i, j in pairs}


def run_datasketch(texts: list[str], args) -> tuple[float, set[tuple[int, int]], tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    shared = MinHash(num_perm=args.num_perm, seed=args.seed)
    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    signatures = []
    n = args.ngram
    for i, text in enumerate(texts):
        key = shingle_text(text).encode("utf-8")
        grams = {key[k:k + n] for k in range(max(1, len(key) - n + 1))}
        m = MinHash(num_perm=args.num_perm, permutations=shared.permutations, scheme=shared.scheme)
        m.update_batch(list(grams))
        lsh.insert(i, m)
        signatures.append(m)
    found = set()
    for i, m in enumerate(signatures):
        for j in lsh.query(m):
            if j != i:
                found.add((min(i, j), max(i, j)))
    return time.perf_counter() - start, found, (lsh.b, lsh.r)


def precision_recall(found: set, truth: set) -> tuple[float, float]:
    hit = len(found & truth)
    return (hit / len(found) if found else 1.0), (hit / len(truth) if truth else 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--planted", type=int, default=11_000)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--num-perm", type=int, default=64)
    parser.add_argument("--bands", type=int, default=16)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    import torch  # not used here, but fix its pool too so nothing else spins up threads

    torch.set_num_threads(1)
    texts, planted = corpus(args.docs, args.planted, args.seed)
    hashes, offsets = shingles(texts, ngram=args.ngram)
    token_sets = [frozenset(hashes[offsets[i]:offsets[i + 1]].tolist()) for i in range(len(texts))]
    truth = exact_pairs(token_sets, args.threshold)
    planted_similar = {p for p in planted if p in truth}
    print(f"corpus: {len(texts)} texts, median {int(np.median([len(t) for t in texts]))} chars, "
          f"{len(planted)} planted near-duplicates ({len(planted_similar)} of them with Jaccard >= {args.threshold}); "
          f"{len(truth)} pairs with exact Jaccard >= {args.threshold} (char {args.ngram}-grams)")

    run_ours(texts[:2000], args)  # warm-up: imports, allocator
    ours_s, ours = run_ours(texts, args)
    base_s, base, (b, r) = run_datasketch(texts, args)
    rows = [("ours (numpy MinHash+LSH, verified)", ours_s, ours, f"{args.bands}x{args.num_perm // args.bands}"),
            ("datasketch MinHash+LSH (baseline)", base_s, base, f"{b}x{r}")]
    print(f"{'method':36} {'bands':>6} {'docs/s/core':>12} {'precision':>10} {'recall':>7} {'planted recall':>15}")
    for name, seconds, found, banding in rows:
        precision, recall = precision_recall(found, truth)
        planted_recall = len(found & planted) / len(planted)
        print(f"{name:36} {banding:>6} {len(texts) / seconds:12.0f} {precision:10.4f} {recall:7.4f} "
              f"{planted_recall:15.4f}")
    print(f"speed-up: {base_s / ours_s:.2f}x (threads: numpy 1, torch {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
