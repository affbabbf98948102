"""Parameter-efficient adapters on a text encoder: the peft methods by name, and the bottleneck adapter.

A building block below `training/` (which trains them) and `model` (which loads a saved model that keeps its
adapter): both rebuild an adapter from the same plain description, `{"kind": "peft", "method": ..., ...}` or
`{"kind": "bottleneck", ...}`, stored in `classifier.json` under `adapter`.

peft methods are a registry (`PEFT_METHODS`): each builds its peft config from a trial's hyperparameters, the
encoder's target modules and the run's optimiser steps, and says whether it merges into the base weights.
Prefix tuning is refused: peft 0.21 hands the prefixes over as `past_key_values`, and transformers 5 renamed
that argument for encoders, so peft fails with "Model does not support past key values".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# ---------------------------------------------------------------- the bottleneck adapter (Houlsby et al., 2019)


class Bottleneck(nn.Module):
    """`x + up(gelu(down(x)))`: a down-projection to `size`, a non-linearity, an up-projection back.

    The up-projection starts at zero, so before training the adapter is the identity and the adapted encoder
    computes exactly what the pretrained one does; training moves it away only as far as the task needs.
    """

    def __init__(self, features: int, size: int) -> None:
        super().__init__()
        self.down = nn.Linear(features, size)
        self.up = nn.Linear(size, features)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


class Adapted(nn.Module):
    """A sublayer's output projection followed by its bottleneck adapter (before the residual and layer norm,
    where Houlsby et al. place it: after attention and after the feed-forward block)."""

    def __init__(self, base_layer: nn.Linear, size: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = Bottleneck(base_layer.out_features, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base_layer(x))


def add_bottleneck_adapters(encoder: nn.Module, *, size: int, targets: Iterable[str]) -> nn.Module:
    """Freeze `encoder` and put a bottleneck adapter after every Linear whose name ends with one of `targets`
    (`attention.output.dense` and `output.dense` in BERT-family encoders). Returns the encoder."""
    targets = tuple(targets)
    for p in encoder.parameters():
        p.requires_grad_(False)
    matched = [(name, module) for name, module in encoder.named_modules()
               if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]
    if not matched:
        raise ValueError(f"adapter targets {list(targets)} match no Linear layer of the encoder")
    for name, module in matched:
        parent_name, _, child = name.rpartition(".")
        parent = encoder.get_submodule(parent_name) if parent_name else encoder
        setattr(parent, child, Adapted(module, size))
    return encoder


# ---------------------------------------------------------------- peft methods


@dataclass(frozen=True)
class PeftMethod:
    """One peft method: its config from `(hp, targets, total_steps)`, and whether it merges into the weights."""

    config: Callable[[dict[str, Any], list[str], int], Any]
    mergeable: bool


def _lora(hp: dict[str, Any], targets: list[str], steps: int, **extra: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=int(hp["r"]), lora_alpha=int(hp["alpha"]), lora_dropout=float(hp.get("adapter_dropout", 0.0)),
                      target_modules=targets, **extra)


def _adalora(hp: dict[str, Any], targets: list[str], steps: int) -> Any:
    from peft import AdaLoraConfig

    # AdaLoRA prunes ranks on a schedule over the whole run: it needs the optimiser steps up front
    return AdaLoraConfig(init_r=int(hp["init_r"]), target_r=int(hp["target_r"]), lora_alpha=int(hp["alpha"]),
                         lora_dropout=float(hp.get("adapter_dropout", 0.0)), target_modules=targets,
                         total_step=max(int(steps), 1), tinit=0, tfinal=0, deltaT=1)


def _ia3(hp: dict[str, Any], targets: list[str], steps: int) -> Any:
    from peft import IA3Config

    return IA3Config(target_modules=targets, feedforward_modules=[])


def _loha(hp: dict[str, Any], targets: list[str], steps: int) -> Any:
    from peft import LoHaConfig

    return LoHaConfig(r=int(hp["r"]), alpha=int(hp["alpha"]), target_modules=targets)


def _lokr(hp: dict[str, Any], targets: list[str], steps: int) -> Any:
    from peft import LoKrConfig

    return LoKrConfig(r=int(hp["r"]), alpha=int(hp["alpha"]), target_modules=targets)


def _oft(hp: dict[str, Any], targets: list[str], steps: int) -> Any:
    from peft import OFTConfig

    return OFTConfig(r=0, oft_block_size=int(hp["block_size"]), target_modules=targets)


def _boft(hp: dict[str, Any], targets: list[str], steps: int) -> Any:
    from peft import BOFTConfig

    return BOFTConfig(boft_block_size=int(hp["block_size"]), boft_n_butterfly_factor=int(hp["butterfly_factor"]),
                      target_modules=targets)


def _vera(hp: dict[str, Any], targets: list[str], steps: int) -> Any:
    from peft import VeraConfig

    return VeraConfig(r=int(hp["r"]), target_modules=targets, save_projection=True)


def _prompt_tuning(hp: dict[str, Any], targets: list[str], steps: int) -> Any:
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=int(hp["virtual_tokens"]))


def _p_tuning(hp: dict[str, Any], targets: list[str], steps: int) -> Any:
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=int(hp["virtual_tokens"]),
                               encoder_hidden_size=int(hp["encoder_hidden"]))


PEFT_METHODS: dict[str, PeftMethod] = {
    "lora": PeftMethod(_lora, True),
    "dora": PeftMethod(lambda hp, targets, steps: _lora(hp, targets, steps, use_dora=True), True),
    "adalora": PeftMethod(_adalora, True),
    "ia3": PeftMethod(_ia3, True),
    "loha": PeftMethod(_loha, True),
    "lokr": PeftMethod(_lokr, True),
    "oft": PeftMethod(_oft, True),
    "boft": PeftMethod(_boft, True),
    "vera": PeftMethod(_vera, True),
    "prompt_tuning": PeftMethod(_prompt_tuning, False),
    "p_tuning": PeftMethod(_p_tuning, False),
}

# known to fail, with the cause: listed so that choosing one says why instead of "unknown"
REFUSED = {
    "prefix_tuning": "peft 0.21 passes prefixes as past_key_values, which transformers 5 encoders no longer accept "
                     "(\"Model does not support past key values\")",
}


def get_peft_method(name: str) -> PeftMethod:
    """The peft method `name`, or a one-line error: why it is refused, or the known names."""
    if name in REFUSED:
        raise ValueError(f"peft method {name!r} is not supported: {REFUSED[name]}")
    try:
        return PEFT_METHODS[name]
    except KeyError:
        raise ValueError(f"unknown peft method {name!r}; known: {sorted(PEFT_METHODS)}") from None


def add_peft(encoder: nn.Module, *, method: str, hp: dict[str, Any], targets: list[str], total_steps: int) -> nn.Module:
    """`encoder` wrapped by peft with `method`'s config (the base frozen, the adapter trainable)."""
    from peft import get_peft_model

    config = get_peft_method(method).config(hp, list(targets), total_steps)
    return get_peft_model(encoder, config)


# ---------------------------------------------------------------- saved adapters


ATTACHERS: dict[str, Callable[[nn.Module, dict[str, Any]], nn.Module]] = {
    "bottleneck": lambda encoder, a: add_bottleneck_adapters(encoder, size=int(a["size"]), targets=a["targets"]),
    "peft": lambda encoder, a: add_peft(encoder, method=a["method"], hp=a["hp"], targets=a["targets"],
                                        total_steps=int(a["total_steps"])),
}


def attach(encoder: nn.Module, adapter: dict[str, Any]) -> nn.Module:
    """`encoder` with the adapter that `adapter` (a saved description) names, freshly initialised."""
    kind = adapter.get("kind")
    if kind not in ATTACHERS:
        raise ValueError(f"classifier.json: adapter.kind: unknown kind {kind!r}; known: {sorted(ATTACHERS)}")
    return ATTACHERS[kind](encoder, adapter)


def split_adapter(state: dict[str, torch.Tensor], plain_keys: set[str]) -> tuple[dict[str, torch.Tensor],
                                                                                dict[str, torch.Tensor]]:
    """`(base, adapter)` tensors of an adapted model's state: a key that, without the wrappers' segments
    (peft's `base_model.model.`, `base_model.` and `.base_layer`), is one of the plain model's keys is base, under
    that plain key; every other tensor is the adapter's, under its own key. Aliases of a base tensor (peft's
    prompt learning keeps the word embeddings twice) are left out."""
    base: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        plain = unwrapped_key(key)
        if plain in plain_keys and plain not in base:
            base[plain] = tensor
        else:
            rest[key] = tensor
    pointers = {t.data_ptr() for t in base.values()}
    return base, {k: v for k, v in rest.items() if v.data_ptr() not in pointers}


def unwrapped_key(key: str) -> str:
    """A wrapped model's state key as the plain model names it."""
    for segment in ("base_model.model.", "base_model."):
        key = key.replace(segment, "")
    return key.replace(".base_layer.", ".")
