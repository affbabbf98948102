"""The interface every modality implements."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class Modality:
    """What a stage may ask of a kind of data.

    A payload is the value in column `payload_column`: a `str` for text, PNG `bytes` for images.
    """

    name: str = ""
    payload_column: str = ""
    # names in `stages.baselines.BASELINES`: the simple models every evaluation scores beside the fine-tuned one
    baselines: tuple[str, ...] = ()

    # ---- acquire
    def from_bytes(self, raw: bytes) -> tuple[Any, str | None]:
        """Turn one source file's bytes into `(payload, text_encoding_or_None)`; clean validates later."""
        raise NotImplementedError

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
