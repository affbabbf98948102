"""TF-IDF features as a torch module, for the text strategy `hybrid` (a linear probe on MiniLM ⊕ TF-IDF).

The vocabulary and idf weights are fitted with scikit-learn's `TfidfVectorizer` on the train rows, then held
as plain data: the vocabulary as JSON next to the model, idf as a buffer in its safetensors. Inference
re-implements the vectorizer's analysis (lowercase, `(?u)\\b\\w\\w+\\b` tokens, word n-grams, sublinear tf,
idf, L2 norm) in a few lines, so a saved model needs no pickled vectorizer; a test checks it against
scikit-learn's own transform.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

TFIDF_FILE = "tfidf.json"  # in the model's backbone folder: {"vocab": [term, ...]} in column order
_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern


@dataclass(frozen=True)
class TfidfParams:
    ngram_max: int = 2                 # word n-grams 1..ngram_max
    min_df: int = 1
    max_features: int | None = 20000   # the most frequent terms in the train rows
    sublinear_tf: bool = True          # 1 + log(tf)
    encoder_weight: float = 1.0        # the L2-normalised encoder feature is scaled by this before concatenation


def terms(text: str, ngram_max: int) -> list[str]:
    """The vectorizer's analysis of one text: lowercased tokens of 2+ word characters, then their n-grams."""
    tokens = _TOKEN.findall(text.lower())
    grams = list(tokens)
    for n in range(2, ngram_max + 1):
        grams.extend(" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return grams


def fit_tfidf(texts: Sequence[str], params: TfidfParams) -> tuple[list[str], np.ndarray]:
    """Vocabulary (column order) and smoothed idf weights of the train rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, params.ngram_max), min_df=params.min_df,
                                 max_features=params.max_features, sublinear_tf=params.sublinear_tf)
    vectorizer.fit(list(texts))
    return [str(t) for t in vectorizer.get_feature_names_out()], vectorizer.idf_.astype(np.float32)


class TfidfFeatures(nn.Module):
    """Texts to L2-normalised TF-IDF vectors over a fixed vocabulary (`encode` on the host, `forward` on tensors)."""

    def __init__(self, vocab: Sequence[str], idf: np.ndarray, params: TfidfParams) -> None:
        super().__init__()
        self.vocab, self.params = list(vocab), params
        self.index = {term: i for i, term in enumerate(self.vocab)}
        self.register_buffer("idf", torch.as_tensor(np.asarray(idf, dtype=np.float32)))

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Term frequencies of the known terms as (row, column, tf) triples, plus the number of rows."""
        rows, cols, values = [], [], []
        for row, text in enumerate(texts):
            counts = Counter(self.index[t] for t in terms(text, self.params.ngram_max) if t in self.index)
            for col, count in counts.items():
                rows.append(row)
                cols.append(col)
                values.append(1.0 + math.log(count) if self.params.sublinear_tf else float(count))
        return {"tfidf_rows": torch.tensor(rows, dtype=torch.long), "tfidf_cols": torch.tensor(cols, dtype=torch.long),
                "tfidf_tf": torch.tensor(values, dtype=torch.float32), "tfidf_n": torch.tensor([len(texts)])}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dense = torch.zeros(int(batch["tfidf_n"][0]), len(self.vocab), device=self.idf.device)
        dense[batch["tfidf_rows"], batch["tfidf_cols"]] = batch["tfidf_tf"].to(dense.dtype)
        return nn.functional.normalize(dense * self.idf, dim=1)


class HybridBackbone(nn.Module):
    """A frozen text encoder's L2-normalised feature (times `encoder_weight`) beside the TF-IDF vector: lexical
    evidence (an SMS's "txt ... to 80082") and meaning in one feature for one linear layer."""

    def __init__(self, text: Any, tfidf: TfidfFeatures) -> None:
        super().__init__()
        self.text, self.tfidf = text, tfidf
        self.tokenizer = text.tokenizer
        self.feature_dim = text.feature_dim + len(tfidf.vocab)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.combine(self.text({k: v for k, v in batch.items() if not k.startswith("tfidf_")}), batch)

    def combine(self, encoded: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The hybrid feature from the encoder's features and the batch's TF-IDF terms (training passes stored
        encoder features here, serving the encoder's output: one definition for both)."""
        encoded = nn.functional.normalize(encoded.float(), dim=1) * self.tfidf.params.encoder_weight
        return torch.cat([encoded, self.tfidf(batch)], dim=1)
