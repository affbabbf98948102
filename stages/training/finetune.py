"""Strategies whose backbone trains too: `full` (the whole pretrained network), `lora` (peft low-rank adapters
on a text encoder, merged before saving) and `scratch` (the modality's small backbone from random weights)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common import StageError
from stages.modalities import Modality
from stages.model import Classifier, batched_forward, make_head, to_device
from stages.training.frozen import trainable_parameters
from stages.training.distributed import shard
from stages.training.loop import EpochCallback, fit_epochs, loop_args, score, val_loss
from stages.training.strategy import FitResult, SplitData, StrategyDefaults, register


@register("full")
class FullStrategy(StrategyDefaults):
    """Fine-tune the whole pretrained network; each trial starts from the pretrained weights."""

    def __init__(self, modality: Modality, spec: dict[str, Any], data: SplitData, *, metric: str, patience: int,
                 device: torch.device, feature_batch_size: int, feature_cache: Path | None = None,
                 feature_store: Path | None = None) -> None:
        self.modality, self.spec, self.data, self.metric = modality, spec, data, metric
        self.patience, self.device, self.eval_batch = patience, device, feature_batch_size
        self.n_classes = int(max(data.train_labels.max(), data.val_labels.max())) + 1

    pretrained = True

    def build(self, hp: dict[str, Any]) -> Classifier:
        backbone = self.modality.build_backbone(self.spec, pretrained=self.pretrained)
        head = make_head(backbone.feature_dim, self.n_classes, hidden=hp["head_hidden"], dropout=hp["dropout"])
        if hp.get("gradient_checkpointing"):
            # recompute activations in the backward pass instead of keeping them: memory for compute
            enable = getattr(getattr(backbone, "encoder", None), "gradient_checkpointing_enable", None)
            if enable is None:
                raise StageError("params.yaml: train.search.*.gradient_checkpointing: this backbone "
                                 f"({self.spec.get('backbone')!r}) does not support it")
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return Classifier(backbone, head)

    def fit(self, hp: dict[str, Any], on_epoch: EpochCallback, *, seed: int) -> FitResult:
        torch.manual_seed(seed)
        model = self.build(hp).to(self.device)
        backbone = model.backbone
        generator = torch.Generator().manual_seed(seed)
        payloads, labels = self.data.train_payloads, torch.from_numpy(self.data.train_labels).long()

        def batches(epoch: int):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order), hp["batch_size"]):
                idx = shard(order[start:start + hp["batch_size"]]).tolist()
                if len(idx) == 0:  # a last batch smaller than the number of DDP ranks
                    continue
                batch = self.modality.to_batch([payloads[i] for i in idx], self.spec, backbone)
                yield to_device(batch, self.device), labels[idx].to(self.device)

        def evaluate() -> tuple[float, float]:
            model.eval()
            logits = batched_forward(model, self.modality, self.spec, self.data.val_payloads, backbone,
                                     batch_size=self.eval_batch, device=self.device)
            labels = self.data.val_labels
            return score(self.metric, labels, logits.argmax(1)), val_loss(logits, labels)

        best, best_epoch, epochs = fit_epochs(model, batches=batches, evaluate=evaluate, patience=self.patience,
                                              device=self.device, on_epoch=on_epoch, **loop_args(hp),
                                              steps_per_epoch=math.ceil(len(labels) / hp["batch_size"]),
                                              after_step=self.after_step(model, hp))
        return FitResult(self.finalise(model, hp), best, best_epoch, epochs)

    def steps(self, hp: dict[str, Any]) -> int:
        """Optimiser steps of a run of `hp["max_epochs"]` epochs on the train rows."""
        batches = math.ceil(len(self.data.train_labels) / int(hp["batch_size"]))
        return int(hp["max_epochs"]) * math.ceil(batches / int(hp.get("gradient_accumulation", 1)))

    def after_step(self, model: Classifier, hp: dict[str, Any]) -> Any:
        """What runs after each optimiser step (`fit_epochs`' `after_step`): nothing here."""
        return None

    def finalise(self, model: Classifier, hp: dict[str, Any]) -> Classifier:
        """The trained model as it is checkpointed and saved."""
        return model

    def restorable(self, hp: dict[str, Any]) -> Classifier:
        """The architecture a checkpoint of a finalised model loads into."""
        return self.build({**hp, "lora_r": 0})

    def saved_config(self, hp: dict[str, Any]) -> dict[str, Any]:
        """Keys the saved model's `classifier.json` needs beyond the common ones (a kept adapter's description)."""
        return {}

    def val_logits(self, model: Classifier) -> tuple[np.ndarray, np.ndarray]:
        """`model`'s logits on the val rows and their labels: what calibration fits."""
        model.eval()
        return batched_forward(model, self.modality, self.spec, self.data.val_payloads, model.backbone,
                               batch_size=self.eval_batch, device=self.device), self.data.val_labels

    def checkpoint(self, model: Classifier) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def restore(self, state: dict[str, torch.Tensor], hp: dict[str, Any]) -> Classifier:
        model = self.restorable(hp)
        model.load_state_dict(state)
        return model.to(self.device)

    def refit(self, hp: dict[str, Any], *, epochs: int, seed: int, with_val: bool) -> Classifier:
        clone = copy.copy(self)
        if with_val:
            d = self.data
            clone.data = SplitData(d.train_payloads + d.val_payloads, np.concatenate([d.train_labels, d.val_labels]),
                                   d.val_payloads, d.val_labels)
        clone.patience = math.inf
        return clone.fit({**hp, "max_epochs": epochs, "schedule_epochs": hp["max_epochs"]}, lambda e, m: None,
                         seed=seed).model

    def describe(self, hp: dict[str, Any]) -> dict[str, Any]:
        return {"method": self.name, "trainable_parameters": trainable_parameters(self.build(hp))}



@register("lora")
class LoraStrategy(FullStrategy):
    """Low-rank adapters (peft) on the text encoder plus a trained head; merged after training."""

    def __init__(self, modality: Modality, spec: dict[str, Any], data: SplitData, **kwargs: Any) -> None:
        if not modality.lora_targets(spec):
            raise StageError(f"params.yaml: train.strategy: 'lora' is not available for modality {modality.name!r}")
        super().__init__(modality, spec, data, **kwargs)

    def build(self, hp: dict[str, Any]) -> Classifier:
        model = super().build(hp)
        if hp.get("lora_r", 0) <= 0:
            return model
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=int(hp["lora_r"]), lora_alpha=int(hp["lora_alpha"]), lora_dropout=float(hp["dropout"]),
                            target_modules=self.modality.lora_targets(self.spec))
        model.backbone.encoder = get_peft_model(model.backbone.encoder, config)
        return model

    def finalise(self, model: Classifier, hp: dict[str, Any]) -> Classifier:
        # merge the adapters so the saved model is a plain encoder that serving loads unchanged
        if hasattr(model.backbone.encoder, "merge_and_unload"):
            model.backbone.encoder = model.backbone.encoder.merge_and_unload()
        return model



@register("scratch")
class ScratchStrategy(FullStrategy):
    """The modality's small backbone (`params.train.scratch_model.<modality>`) trained from random weights."""

    pretrained = False
    spec_section = "scratch_model"

