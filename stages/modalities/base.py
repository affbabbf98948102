"""The interface every modality implements."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def data_uri(payload: bytes, mime: str) -> str:
    """`payload` as a `data:` URI (how a Label Studio task carries an image or a recording)."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


@dataclass(frozen=True)
class Generated:
    """What a generated source (`Modality.generated_sources`) yields: one dict per row with `payload`, `label`,
    `source_ref` and any provenance columns (a voice, a rate), the source's name and licence, and the time
    its inputs were made (the rows' `acquired_at`, so a rerun yields the same table)."""

    rows: list[dict[str, Any]]
    source_name: str
    license: str
    modified: float


class Modality:
    """What a stage may ask of a kind of data.

    A payload is the value in column `payload_column`, of type `payload_type`: a `str` for text, PNG `bytes` for
    images, 16-bit PCM WAV `bytes` for audio. Stages never test a modality's name or its payload's type: what
    differs between modalities is asked of the modality (this interface), so a new one is one new module.
    """

    name: str = ""
    payload_column: str = ""
    payload_type: type = object       # the Python type of a payload (the data contracts check it)
    label_studio_tag: str = ""        # the Label Studio object tag that shows a payload: Text, Image, Audio
    input_suffixes: tuple[str, ...] = ()  # file suffixes `predict` reads from a folder as one input each
    # names in `stages.baselines.BASELINES`: the simple models every evaluation scores beside the fine-tuned one
    baselines: tuple[str, ...] = ()
    # how clean finds near duplicates, for engines that distribute it (`stages/engine`): "minhash" (shingle MinHash +
    # LSH bands, exact Jaccard), "phash" (perceptual hash + thumbnail correlation); None = on the collected payloads
    near_duplicate_method: str | None = None

    # ---- acquire
    def from_bytes(self, raw: bytes) -> tuple[Any, str | None]:
        """Turn one source file's bytes into `(payload, text_encoding_or_None)`; clean validates later."""
        raise NotImplementedError

    def payload_bytes(self, payload: Any) -> bytes:
        """The bytes a raw payload is fingerprinted by (`sha256` provenance); a missing payload is no bytes."""
        if payload is None:
            return b""
        return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)

    def generated_sources(self) -> dict[str, Any]:
        """Source kinds this modality generates itself (`tasks.<task>.source.kind`), by name.

        Each is `fn(spec, seed) -> Generated`; acquire turns the rows into its table like any other source's.
        """
        return {}

    # ---- clean
    def clean_params(self, values: dict[str, Any]) -> Any:
        """Build this modality's frozen clean-params dataclass from `params.clean.<name>`."""
        raise NotImplementedError

    def normalise(self, payload: Any, params: Any) -> tuple[Any, str | None]:
        """Return `(normalised_payload, None)` to keep a row, or `(None, reason)` to quarantine it."""
        raise NotImplementedError

    def personal_data(self, payload: Any, params: Any) -> tuple[Any, dict[str, int], str | None]:
        """Personal data in a normalised payload: `(payload, count per kind, reason)`.

        The payload comes back with what was found redacted (unchanged where nothing was found or detection is
        off); `reason` is None to keep the row, or a quarantine reason. A modality without a detector finds none.
        """
        return payload, {}, None

    def content_hash(self, payload: Any) -> str:
        """Hash of a normalised payload; equal hashes are exact duplicates."""
        raise NotImplementedError

    def describe(self, payloads: Sequence[Any]) -> dict[str, float]:
        """Summary numbers (lengths or sizes) for quality metrics."""
        raise NotImplementedError

    def near_duplicate_pairs(self, payloads: Sequence[Any], params: Any) -> tuple[Any, Any]:
        """Verified near-duplicate pairs of normalised payloads: `(pairs (n, 2) int array, similarity (n,))`."""
        raise NotImplementedError

    # ---- augment
    def augment_params(self, values: dict[str, Any]) -> Any:
        raise NotImplementedError

    def augment(self, payloads: Sequence[Any], params: Any, *, seed: int,
                protected: frozenset[str] = frozenset()) -> list[Any]:
        """One augmented copy per payload, deterministic for a given seed and order.

        `protected`: words an augmenter must neither replace nor introduce (the task's label-rule keywords).
        """
        raise NotImplementedError

    def augment_draws(self, payloads: Sequence[Any], params: Any, *, seed: int,
                      protected: frozenset[str] = frozenset()) -> list[Any] | None:
        """The random draws `augment` makes, one per payload in its order, for `augment_one` to apply anywhere
        (an engine's workers) with the same result as `augment`; None where drawing cannot be separated from
        transforming (the draws depend on what the transforms did), so `augment` runs in one process."""
        return None

    def augment_one(self, payload: Any, draw: Any, params: Any) -> Any:
        """`payload` augmented with its draw from `augment_draws` (no randomness of its own: it may run anywhere)."""
        raise NotImplementedError

    # ---- model
    def backbone_names(self) -> list[str]:
        raise NotImplementedError

    def build_backbone(self, spec: dict[str, Any], *, pretrained: bool, model_dir: Path | None = None) -> Any:
        """A torch module mapping a batch (from `to_batch`) to features of shape (B, feature_dim).

        `spec` is the model section of the saved classifier config. With `pretrained=True`
        the weights come from the pinned package that ships them; with False the architecture
        is built empty (from `model_dir` where it needs files) for a saved state dict to fill.
        """
        raise NotImplementedError

    def to_batch(self, payloads: Sequence[Any], spec: dict[str, Any], backbone: Any) -> Any:
        """Turn payloads into the backbone's input (a tensor, or a dict of tensors)."""
        raise NotImplementedError

    def save_backbone_files(self, backbone: Any, model_dir: Path) -> None:
        """Write what `build_backbone(pretrained=False, model_dir=...)` needs besides weights."""

    def bag_of_words(self) -> bool:
        """Whether payloads are texts that TF-IDF reads (strategy `hybrid`)."""
        return False

    def feature_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The part of a model spec that decides a frozen backbone's features (what a feature cache is keyed on)."""
        return dict(spec)

    def lora_targets(self, spec: dict[str, Any]) -> list[str]:
        """Module names that take LoRA adapters; empty where the strategy does not apply."""
        return []

    def baseline_input(self, payloads: Sequence[Any]) -> Any:
        """Payloads in the form this modality's baselines take (`stages.baselines`)."""
        return list(payloads)

    def decode_input(self, value: Any) -> Any:
        """Turn one serving input value (str text, or image bytes) into a payload for `to_batch`."""
        return value

    def from_input(self, value: Any) -> Any:
        """One value a user sent to a served model, before clean's rules: bytes are read as a source file is
        (`from_bytes`: text is decoded as acquire decodes files); anything else passes to `normalise` as it is."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.from_bytes(bytes(value))[0]
        return value

    # ---- review and prediction inputs
    def review_value(self, payload: Any) -> Any:
        """A payload as a Label Studio task shows it (`data.<payload_column>`): the text itself, or a data URI."""
        return payload

    def read_inputs(self, path: Path, *, column: str) -> Any:
        """What `predict` reads: a folder of (or one) `input_suffixes` file(s), or a CSV whose `column` holds payloads.

        Returns a DataFrame with the payload column and a `file` column (absent for a CSV, whose payloads are the keys).
        """
        import pandas as pd

        from stages.common import StageError

        suffixes = set(self.input_suffixes)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                           and not p.is_symlink())
            if not files:
                raise StageError(f"{path}: no {self.name} files ({', '.join(sorted(suffixes))})")
            return pd.DataFrame({"file": [str(p) for p in files],
                                 self.payload_column: [self.from_bytes(p.read_bytes())[0] for p in files]})
        if path.suffix.lower() in suffixes and path.is_file():
            return pd.DataFrame({"file": [str(path)], self.payload_column: [self.from_bytes(path.read_bytes())[0]]})
        if path.suffix.lower() == ".csv" and path.is_file():
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
            if column not in frame.columns:
                raise StageError(f"{path}: column {column!r} not found; columns: {list(frame.columns)}")
            return frame.rename(columns={column: self.payload_column})
        kinds = ", ".join(sorted(suffixes)) or "no files"
        raise StageError(f"{path}: not found, or not a .csv, a {self.name} file ({kinds}) or a folder of them")
