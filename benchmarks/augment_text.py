"""Text augmentation in a low-data run: test macro-F1 with no augmentation and with each augmenter, side by side.

News as the pipeline's `max_per_class: 40` profile builds it: per seed, 40 articles per class are drawn, cleaned
with `params.clean` (personal data redacted, as the clean stage does) and split 70/15/15 stratified; the 28 train
articles per class get one augmented copy each (`augment.copies: 1`) from one augmenter at a time, with
`params.augment.by_modality.text` (`synonym_prob`, `swap_prob`, `delete_prob`). The 30 test rows of such a split
would measure F1 in steps of 0.03, so every model is scored on all the other articles of the corpus instead
(about 2,000, never drawn for that seed).

Two models read each training set: `probe` (the text strategy's converged L2 logistic regression on frozen
MiniLM features; `label.encoder.text`, one 256-token window to keep the run short) and the `tfidf_svm` baseline.
Features of the held-out articles are computed once.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/augment_text.py [--seeds 0 1 2] [--per-class 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

AUGMENTERS = (None, "swap_delete", "synonyms", "sentence_shuffle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--l2", type=float, default=1.0e-3, help="probe L2 strength (train.search.probe.l2 range)")
    args = parser.parse_args()

    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    from stages.acquire import SOURCES
    from stages.baselines import TfidfSvmParams, tfidf_svm
    from stages.common import load_params
    from stages.labeling.features import extract
    from stages.modalities import get_modality

    params = load_params()
    text = get_modality("text")
    clean_params = text.clean_params(params["clean"]["by_modality"]["text"])
    spec = {**params["label"]["encoder"]["text"], "max_chunks": 1}
    label_map = params["tasks"]["news"]["label_map"]
    items = SOURCES["bbc_news"]({}, text, None).items
    texts, labels = [], []
    for item in sorted(items, key=lambda it: it.source_ref):
        normalised, reason = text.normalise(item.payload, clean_params)
        if reason is None:
            normalised, _, reason = text.personal_data(normalised, clean_params)
        if reason is None:
            texts.append(normalised)
            labels.append(label_map.get(item.label, item.label))
    labels = np.array(labels)
    classes = sorted(set(labels))
    print(f"news: {len(texts)} articles, {len(classes)} classes; encoder {spec}")

    started = time.perf_counter()
    features = extract(text, spec, texts, batch_size=32)
    print(f"features of every article: {time.perf_counter() - started:.0f} s")

    def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
        norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
        model = LogisticRegression(C=1.0 / (args.l2 * len(train_y)), max_iter=2000)
        return model.fit(norm(train_x), train_y).predict(norm(test_x))

    svm_params = TfidfSvmParams(**params["evaluate"]["baselines"]["tfidf_svm"])
    base_augment = params["augment"]["by_modality"]["text"]
    scores: dict[tuple[str | None, str], list[float]] = {}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        drawn = np.concatenate([rng.choice(np.flatnonzero(labels == c), args.per_class, replace=False)
                                for c in classes])
        train, _ = train_test_split(drawn, test_size=0.3, stratify=labels[drawn], random_state=seed)
        test = np.setdiff1d(np.arange(len(texts)), drawn)
        train_texts = [texts[i] for i in train]
        for name in AUGMENTERS:
            if name is None:
                x_texts, x_features, y = train_texts, features[train], labels[train]
            else:
                augment_params = text.augment_params({**base_augment, "augmenters": [name]})
                copies = text.augment(train_texts, augment_params, seed=seed)
                x_texts = train_texts + copies
                x_features = np.concatenate([features[train], extract(text, spec, copies, batch_size=32)])
                y = np.concatenate([labels[train], labels[train]])
            predicted = probe(x_features, y, features[test])
            scores.setdefault((name, "probe"), []).append(f1_score(labels[test], predicted, average="macro"))
            predicted = tfidf_svm(x_texts, y, [texts[i] for i in test], svm_params, seed)
            scores.setdefault((name, "tfidf_svm"), []).append(f1_score(labels[test], predicted, average="macro"))
        print(f"seed {seed}: {len(train)} train articles, {len(test)} test; "
              f"{time.perf_counter() - started:.0f} s so far", flush=True)

    def cell(values: list[float], reference: list[float]) -> str:
        mean = statistics.mean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        delta = mean - statistics.mean(reference)
        return f"{mean:.4f} ± {sd:.4f} ({delta:+.4f})"

    print(f"\ntest macro-F1 over seeds {args.seeds}, mean ± sd (difference from no augmentation)")
    print(f"{'augmenter (1 copy per train row)':34} | {'probe (MiniLM features)':>28} | {'tfidf_svm':>28}")
    for name in AUGMENTERS:
        print(f"{name or 'none':34} | " + " | ".join(
            f"{cell(scores[(name, model)], scores[(None, model)]):>28}" for model in ("probe", "tfidf_svm")))


if __name__ == "__main__":
    main()
