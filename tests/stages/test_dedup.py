"""Code tests for stages/dedup.py: shingles, MinHash estimates, LSH recall, exact verification, pHash, clusters."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest

from stages.dedup import (
    clusters,
    hamming_pairs,
    image_near_duplicates,
    jaccard_pairs,
    lsh_candidates,
    minhash,
    phash,
    shingle_text,
    shingles,
    text_near_duplicates,
)

WORDS = ("bank market minister election football player profit growth phone music film court police "
         "school water energy price oil tax plan city team game data net vote").split()


def sentence(rng: random.Random, n: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def test_shingle_text_ignores_case_and_punctuation():
    assert shingle_text("  Hello,   WORLD!! ") == "hello world"
    assert shingle_text("a\x00b") == "a b"


def test_shingles_are_exact_byte_ngrams_and_short_texts_get_one():
    hashes, offsets = shingles(["abcdef", "ab", "ABCDEF!"], ngram=5)
    assert list(np.diff(offsets)) == [2, 1, 2]
    assert list(hashes[0:2]) == list(hashes[3:5])  # case and punctuation do not matter
    assert len(set(hashes[0:2].tolist())) == 2


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    texts = [sentence(rng, 40) for _ in range(30)]
    edited = [t.replace(t.split()[5], "zzzz", 1) for t in texts]
    hashes, offsets = shingles(texts + edited, ngram=5)
    signatures = minhash(hashes, offsets, num_perm=256, seed=1)
    pairs = np.array([[i, i + 30] for i in range(30)])
    estimate = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1)
    exact = jaccard_pairs(hashes, offsets, pairs)
    assert np.abs(estimate - exact).mean() < 0.05


def test_lsh_finds_planted_near_duplicates_and_verification_rejects_the_rest():
    rng = random.Random(1)
    texts = [sentence(rng) for _ in range(300)]
    planted = []
    for i in range(0, 300, 10):
        words = texts[i].split()
        words[rng.randrange(len(words))] = "replaced"
        texts.append(" ".join(words).upper() + "!")
        planted.append((i, len(texts) - 1))
    pairs, similarity = text_near_duplicates(texts, ngram=5, num_perm=64, bands=16, threshold=0.7, seed=3)
    found = {tuple(p) for p in pairs.tolist()}
    assert set(planted) <= found
    assert (similarity >= 0.7).all()
    # every reported pair really has exact Jaccard >= threshold
    hashes, offsets = shingles(texts, ngram=5)
    assert np.allclose(jaccard_pairs(hashes, offsets, pairs), similarity)


def test_lsh_candidates_bucket_equal_bands():
    signatures = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 3, 4], [5, 5, 5, 5]], dtype=np.uint32)
    assert lsh_candidates(signatures, bands=2).tolist() == [[0, 1], [0, 2]]
    with pytest.raises(ValueError, match="multiple"):
        lsh_candidates(signatures, bands=3)


def test_clusters_are_transitive_with_smallest_id_as_root():
    ids = ["d", "b", "c", "a", "e"]
    roots = clusters(ids, np.array([[0, 1], [1, 2], [3, 2]]))
    assert [ids[r] for r in roots] == ["a", "a", "a", "a", "e"]


def test_hamming_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 50, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, 50).astype(np.uint64)
    hashes = np.concatenate([base, base ^ flips])
    pairs, distance = hamming_pairs(hashes, max_distance=2, block=7)
    brute = {(i, j) for i in range(100) for j in range(i + 1, 100)
             if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 2}
    assert {tuple(p) for p in pairs.tolist()} == brute
    assert (distance <= 2).all()


def _drawing(seed: int) -> "Image.Image":  # noqa: F821
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.randrange(2, 20), rng.randrange(2, 20)
        draw.ellipse([x, y, x + rng.randrange(4, 8), y + rng.randrange(4, 8)], fill=rng.randrange(120, 256))
    return image


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_phash_is_stable_under_resize_and_brightness():
    from PIL import ImageEnhance

    image = _drawing(0)
    variants = [image, image.resize((56, 56)), ImageEnhance.Brightness(image).enhance(1.15)]
    from stages.dedup import thumbnails

    hashes = phash(thumbnails([_png(v) for v in variants], side=32))
    assert max(bin(int(hashes[0]) ^ int(h)).count("1") for h in hashes[1:]) <= 4


def test_image_near_duplicates_finds_transformed_copies_only():
    from PIL import ImageEnhance

    originals = [_drawing(s) for s in range(20)]
    payloads = [_png(o) for o in originals]
    payloads.append(_png(originals[3].resize((56, 56))))
    payloads.append(_png(ImageEnhance.Brightness(originals[7]).enhance(0.85)))
    payloads.append(_png(originals[11].rotate(2)))
    pairs, correlation = image_near_duplicates(payloads, max_distance=8, min_correlation=0.97)
    assert {tuple(p) for p in pairs.tolist()} == {(3, 20), (7, 21), (11, 22)}
    assert (correlation >= 0.97).all()
