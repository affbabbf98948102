"""Parameter-efficient fine-tuning of a text encoder: the base stays frozen, an adapter and the head train.

- `peft`: the peft method named by `train.peft.method` (`stages/adapters.py`: lora, dora, adalora, ia3, loha, lokr,
  oft, boft, vera, prompt_tuning, p_tuning). Its search space is `train.search.peft` (the loop's entries) plus
  `train.peft.search.<method>` (the method's own). Methods that merge into the weights are merged before saving,
  so the saved model is a plain encoder; the others keep their adapter, saved beside the weights.
- `adapter`: bottleneck adapters after attention and after the feed-forward block (Houlsby et al., 2019), which
  peft does not have; the `adapters` package pins transformers 4.57, which cannot install beside our pins.
"""

from __future__ import annotations

from typing import Any

from stages.adapters import add_bottleneck_adapters, add_peft, get_peft_method
from stages.common import StageError
from stages.model import Classifier
from stages.training.finetune import FullStrategy
from stages.training.frozen import trainable_parameters
from stages.training.strategy import register


class _EncoderAdapterStrategy(FullStrategy):
    """A pretrained text encoder with an adapter; the subclasses say which and whether it merges."""

    def __init__(self, modality: Any, spec: dict[str, Any], data: Any, **kwargs: Any) -> None:
        if not modality.lora_targets(spec):
            raise StageError(f"params.yaml: train.strategy: {self.name!r} is not available for modality "
                             f"{modality.name!r} (it adapts a text encoder: train.model.text.lora_targets)")
        super().__init__(modality, spec, data, **kwargs)

    def plain(self, hp: dict[str, Any]) -> Classifier:
        return FullStrategy.build(self, hp)

    def adapt(self, encoder: Any, hp: dict[str, Any]) -> Any:
        raise NotImplementedError

    def merges(self, hp: dict[str, Any]) -> bool:
        return False

    def build(self, hp: dict[str, Any]) -> Classifier:
        model = self.plain(hp)
        model.backbone.encoder = self.adapt(model.backbone.encoder, hp)
        return model

    def finalise(self, model: Classifier, hp: dict[str, Any]) -> Classifier:
        if self.merges(hp):  # the saved model is then a plain encoder that serving loads unchanged
            model.backbone.encoder = model.backbone.encoder.merge_and_unload()
        return model

    def restorable(self, hp: dict[str, Any]) -> Classifier:
        return self.plain(hp) if self.merges(hp) else self.build(hp)

    def describe(self, hp: dict[str, Any]) -> dict[str, Any]:
        model = self.build(hp)
        return {"method": self.method(hp), "merged": self.merges(hp),
                "trainable_parameters": trainable_parameters(model),
                "adapter_parameters": trainable_parameters(model.backbone)}

    def method(self, hp: dict[str, Any]) -> str:
        return self.name


@register("peft")
class PeftStrategy(_EncoderAdapterStrategy):
    """A peft method on the encoder's `lora_targets` (prompt methods add virtual tokens instead)."""

    @classmethod
    def search_space(cls, tp: Any) -> dict[str, dict[str, Any]]:
        section = tp.peft or {}
        method = section.get("method")
        try:
            get_peft_method(method)
        except ValueError as exc:
            raise StageError(f"params.yaml: train.peft.method: {exc}") from None
        own = (section.get("search") or {}).get(method)
        if own is None:
            raise StageError(f"params.yaml: train.peft.search.{method}: missing key")
        # the method is a fixed hyperparameter: it names the study (its hash) and reaches build() with the rest
        return {**tp.search[cls.name], **own, "method": {"type": "fixed", "value": method}}

    def adapt(self, encoder: Any, hp: dict[str, Any]) -> Any:
        return add_peft(encoder, method=hp["method"], hp=hp, targets=self.modality.lora_targets(self.spec),
                        total_steps=self.steps(hp))

    def merges(self, hp: dict[str, Any]) -> bool:
        return get_peft_method(hp["method"]).mergeable

    def after_step(self, model: Classifier, hp: dict[str, Any]) -> Any:
        # AdaLoRA reallocates its rank budget from the gradients after every optimiser step; the others have no hook
        return getattr(model.backbone.encoder.base_model, "update_and_allocate", None)

    def saved_config(self, hp: dict[str, Any]) -> dict[str, Any]:
        if self.merges(hp):
            return {"peft": {"method": hp["method"], "merged": True}}
        return {"adapter": {"kind": "peft", "method": hp["method"], "hp": dict(hp),
                            "targets": self.modality.lora_targets(self.spec), "total_steps": self.steps(hp)}}

    def method(self, hp: dict[str, Any]) -> str:
        return f"peft/{hp['method']}"


@register("adapter")
class AdapterStrategy(_EncoderAdapterStrategy):
    """Bottleneck adapters of `adapter_size` after every Linear named by the search space's `targets`."""

    def adapt(self, encoder: Any, hp: dict[str, Any]) -> Any:
        return add_bottleneck_adapters(encoder, size=int(hp["adapter_size"]), targets=hp["targets"])

    def saved_config(self, hp: dict[str, Any]) -> dict[str, Any]:
        return {"adapter": {"kind": "bottleneck", "size": int(hp["adapter_size"]), "targets": list(hp["targets"])}}
