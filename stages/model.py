"""The classifier shared by train, evaluate and serving: a modality backbone plus a small head.

Saved as a folder: `classifier.json` (everything needed to rebuild the architecture),
`model.safetensors` (all weights; never a pickle) and, for text, `backbone/` (config and tokenizer).
A compressed model (`stages/compress.py`) stores its pruned weights the same way, with
`"compression": {"sparsity": s, "quantize": true}` in `classifier.json`; loading applies the int8 dynamic
quantisation again (deterministic given the weights), so no quantised tensor is ever pickled.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stages.modalities import Modality, get_modality

CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "adapter.safetensors"  # a kept (unmerged) adapter's tensors, beside the plain model's


def choose_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16).

    Without them oneDNN emulates bf16: on an AVX2-only EPYC, Linear, 3x3 conv, MiniLM and EfficientNet forwards ran
    6-8x slower under bf16 autocast than in fp32 (`benchmarks/precision.py`), so autocast there costs, not saves.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `device`: bf16 on CUDA and on CPUs with native bf16, else None (fp32).

    fp16 is never used on CPU (~40x slower than bf16 where bf16 is native).
    """
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where bf16 is native (CUDA, AVX512-BF16/AMX CPUs); plain fp32 elsewhere."""
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def configure_threads(num_threads: int | None) -> None:
    import os

    torch.set_num_threads(num_threads or os.cpu_count() or 1)


def make_head(in_dim: int, n_classes: int, *, hidden: int, dropout: float) -> nn.Sequential:
    """A linear head (`hidden=0`) or a one-hidden-layer MLP."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, n_classes))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, n_classes))


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, batch: Any) -> torch.Tensor:
        return self.head(self.backbone(batch))


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of every Linear layer (CPU inference; weights int8, activations quantised on
    the fly)."""
    import warnings

    with warnings.catch_warnings():  # torch marks eager-mode quantisation deprecated; it still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def is_int8(model: nn.Module) -> bool:
    """True when `model` holds dynamically quantised layers: they run on CPU in fp32, never under autocast."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def batched_forward(fn: Any, modality: Modality, spec: dict[str, Any], payloads: Sequence[Any], backbone: nn.Module,
                    *, batch_size: int, device: torch.device, desc: str | None = None, amp: bool = True) -> np.ndarray:
    """Run `fn(batch)` over payloads in batches under `autocast` (unless `amp` is off); return float32 numpy."""
    from tqdm.auto import tqdm

    outputs = []
    starts = range(0, len(payloads), batch_size)
    with torch.inference_mode(), (autocast(device) if amp else contextlib.nullcontext()):
        for start in tqdm(starts, desc=desc, disable=desc is None, mininterval=5):
            batch = to_device(modality.to_batch(payloads[start:start + batch_size], spec, backbone), device)
            outputs.append(fn(batch).float().cpu().numpy())
    if not outputs:
        return np.zeros((0, getattr(backbone, "feature_dim", 0)), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32)


def softmax(logits: np.ndarray, *, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature` (float64 inside for the small probabilities), as float32.

    A temperature above 1 softens the probabilities, below 1 sharpens them; the arg-max never moves."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    if z.size == 0:
        return z.astype(np.float32)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def predict_logits(classifier: Classifier, modality: Modality, spec: dict[str, Any], payloads: Sequence[Any], *,
                   batch_size: int, device: torch.device) -> np.ndarray:
    """Raw class logits (float32), int8 models on CPU without autocast."""
    amp = not is_int8(classifier)
    device = device if amp else torch.device("cpu")
    classifier.eval().to(device)
    return batched_forward(classifier, modality, spec, list(payloads), classifier.backbone,
                           batch_size=batch_size, device=device, amp=amp)


def predict_proba(classifier: Classifier, modality: Modality, spec: dict[str, Any], payloads: Sequence[Any], *,
                  batch_size: int, device: torch.device, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities: softmax(logits / `temperature`). Pass the model's own,
    `stages.calibration.temperature_of(config)`, for calibrated confidences; 1.0 is the raw softmax."""
    logits = predict_logits(classifier, modality, spec, payloads, batch_size=batch_size, device=device)
    return softmax(logits, temperature=temperature)


def save_classifier(model_dir: Path, classifier: Classifier, config: dict[str, Any]) -> None:
    """Write `classifier.json`, `model.safetensors` and backbone files into `model_dir`.

    A model that keeps an adapter (`config["adapter"]`: one that does not merge into the weights) is saved as the
    plain model's weights in `model.safetensors` and the adapter's in `adapter.safetensors` beside them."""
    from safetensors.torch import save_file, save_model

    model_dir.mkdir(parents=True, exist_ok=True)
    modality = get_modality(config["modality"])
    (model_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    modality.save_backbone_files(classifier.backbone, model_dir)
    if not config.get("adapter"):
        save_model(classifier.cpu(), str(model_dir / WEIGHTS_FILE))
        return
    from stages.adapters import split_adapter

    plain_keys = set(_plain_classifier(config, modality, model_dir).state_dict())
    base, adapter = split_adapter(classifier.cpu().state_dict(), plain_keys)
    save_file({k: v.contiguous() for k, v in base.items()}, str(model_dir / WEIGHTS_FILE))
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(model_dir / ADAPTER_FILE))


def _plain_classifier(config: dict[str, Any], modality: Modality, model_dir: Path) -> Classifier:
    backbone = modality.build_backbone(config["spec"], pretrained=False, model_dir=model_dir)
    return Classifier(backbone, make_head(config["feature_dim"], len(config["labels"]), **config["head"]))


def load_classifier(model_dir: Path) -> tuple[Classifier, dict[str, Any], Modality]:
    """Rebuild the architecture from `classifier.json` and fill it from safetensors (and its adapter, if any)."""
    from safetensors.torch import load_file, load_model

    config = json.loads((model_dir / CONFIG_FILE).read_text())
    modality = get_modality(config["modality"])
    classifier = _plain_classifier(config, modality, model_dir)
    load_model(classifier, str(model_dir / WEIGHTS_FILE))
    if config.get("adapter"):
        from stages.adapters import attach

        classifier.backbone.encoder = attach(classifier.backbone.encoder, config["adapter"])
        adapter = load_file(str(model_dir / ADAPTER_FILE))
        result = classifier.load_state_dict(adapter, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{model_dir / ADAPTER_FILE}: tensors the adapter does not have: "
                             f"{result.unexpected_keys[:3]}")
    if config.get("compression", {}).get("quantize"):
        return quantize_int8(classifier), config, modality
    return classifier.eval(), config, modality
