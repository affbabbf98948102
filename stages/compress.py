"""compress: int8 dynamic quantisation and magnitude pruning of the trained model, re-evaluated on test.

Reads the augmented table (test rows) and the model folder. Prunes the smallest-magnitude
`sparsity` fraction of every Linear weight, quantises Linear layers to int8 (dynamic), and writes
the compressed model folder (pruned weights in safetensors; `load_classifier` re-applies the int8
quantisation, see stages/model.py) and a metrics JSON comparing the compressed model, as reloaded
from that folder, with the original: in-memory serialised size, latency per item on the same
`latency_rows` test rows, and test macro-F1 / accuracy (the compressed model's on every test row; the
original's are evaluate's, read from its eval.json: the same model on the same rows). The compressed model is
calibrated like the original (its own temperature, fitted on the val rows; `compressed.ece` on test). The same
figures are logged to the training run; `register` may register the folder as the compressed
variant with its own alias.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stages.common import StageError, build, load_params, read_parquet, run_main, stage_parser, write_json


@dataclass(frozen=True)
class CompressParams:
    sparsity: float
    quantize: bool
    batch_size: int
    latency_rows: int = 64      # test rows (the first, by id) both models are timed on


def prune_linear(model: nn.Module, *, sparsity: float) -> nn.Module:
    """A copy of `model` with the smallest-magnitude `sparsity` fraction of every Linear weight set to zero."""
    from torch.nn.utils import prune

    if not 0.0 <= sparsity < 1.0:
        raise StageError(f"params.yaml: compress.sparsity: {sparsity} must be in [0, 1)")
    pruned = copy.deepcopy(model).cpu().eval()
    if sparsity > 0:
        for module in pruned.modules():
            if isinstance(module, nn.Linear):
                prune.l1_unstructured(module, "weight", amount=sparsity)
                prune.remove(module, "weight")
    return pruned


def serialized_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def timed_predict(model: nn.Module, modality: Any, spec: dict[str, Any], payloads: list[Any], *,
                  batch_size: int) -> tuple[np.ndarray, float]:
    """Class logits in fp32 on CPU (int8 kernels do not run under autocast) and the wall time."""
    from stages.model import to_device

    outputs = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(payloads), batch_size):
            batch = to_device(modality.to_batch(payloads[i:i + batch_size], spec, model.backbone), torch.device("cpu"))
            outputs.append(model(batch).float().numpy())
    return np.concatenate(outputs), time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, out=False)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--summary", required=True, help="training summary JSON (MLflow run id)")
    parser.add_argument("--out-dir", required=True, help="where to write the compressed model folder")
    parser.add_argument("--eval", required=True, help="evaluate's eval.json: the original model's test scores")
    args = parser.parse_args(argv)

    from sklearn.metrics import accuracy_score, f1_score

    from stages import tracking
    from stages.common import atomic_path
    from stages.calibration import calibrate, expected_calibration_error, temperature_of
    from stages.model import CONFIG_FILE, load_classifier, save_classifier, softmax

    params = load_params()
    cp = build(CompressParams, params.get("compress"), "compress")
    frame = read_parquet(args.inp)
    test = frame[frame["split"] == "test"].sort_values("id", kind="stable")
    if test.empty:
        raise StageError(f"{args.inp}: field 'split': no test rows")
    model, config, modality = load_classifier(Path(args.model_dir))
    payloads = list(test[modality.payload_column])
    index = {lab: i for i, lab in enumerate(config["labels"])}
    y_true = test["label"].map(index).to_numpy()
    compression = {"sparsity": cp.sparsity, "quantize": cp.quantize}
    val = frame[frame["split"] == "val"].sort_values("id", kind="stable")
    with atomic_path(args.out_dir) as tmp_dir:
        save_classifier(tmp_dir, prune_linear(model, sparsity=cp.sparsity), {**config, "compression": compression})
        # calibrated like the model (stages/calibration.py): its own temperature, fitted on the val rows' logits
        # of the model as reloaded, since pruning and int8 move the logits
        reloaded, _, _ = load_classifier(tmp_dir)
        val_logits, _ = timed_predict(reloaded, modality, config["spec"], list(val[modality.payload_column]),
                                      batch_size=cp.batch_size)
        y_val = val["label"].map(index).to_numpy()
        calibration = calibrate(val_logits, y_val, fitted_on="val")
        write_json(tmp_dir / CONFIG_FILE, {**config, "compression": compression, "calibration": calibration})
    small, small_config, _ = load_classifier(Path(args.out_dir))  # measure exactly what serving will load
    scored = json.loads(Path(args.eval).read_text())
    if scored.get("n_test") != len(test):
        raise StageError(f"{args.eval}: field 'n_test': {scored.get('n_test')} test rows, {args.inp} has {len(test)}")
    result: dict[str, Any] = {"sparsity": cp.sparsity, "quantize": cp.quantize, "n_test": len(test)}
    timed = payloads[:max(cp.latency_rows, 1)]
    for name, candidate in (("original", model.cpu().eval()), ("compressed", small)):
        _, seconds = timed_predict(candidate, modality, config["spec"], timed, batch_size=cp.batch_size)
        result[name] = {"bytes": serialized_bytes(candidate), "latency_ms_per_item": 1000 * seconds / len(timed)}
    logits, _ = timed_predict(small, modality, config["spec"], payloads, batch_size=cp.batch_size)
    pred = logits.argmax(1)
    temperature = temperature_of(small_config)
    result["compressed"].update(accuracy=float(accuracy_score(y_true, pred)),
                                macro_f1=float(f1_score(y_true, pred, average="macro", zero_division=0)),
                                temperature=temperature,
                                ece=expected_calibration_error(softmax(logits, temperature=temperature), y_true),
                                ece_uncalibrated=expected_calibration_error(softmax(logits), y_true))
    result["original"].update(accuracy=float(scored["accuracy"]), macro_f1=float(scored["macro_f1"]),
                              **{k: scored[k] for k in ("temperature", "ece", "ece_uncalibrated") if k in scored})
    result["size_ratio"] = result["compressed"]["bytes"] / result["original"]["bytes"]
    result["speedup"] = result["original"]["latency_ms_per_item"] / result["compressed"]["latency_ms_per_item"]
    result["macro_f1_delta"] = result["compressed"]["macro_f1"] - result["original"]["macro_f1"]
    write_json(args.metrics, result)
    summary = json.loads(Path(args.summary).read_text())
    with tracking.resume(params, summary["run_id"]):
        import mlflow

        mlflow.log_metrics({f"compress.{k}": v for k, v in result.items() if isinstance(v, float)})
        mlflow.log_dict(result, "compress/compress.json")
    print(f"compress {args.task}: size x{result['size_ratio']:.2f}, speed x{result['speedup']:.2f}, "
          f"macro-F1 {result['original']['macro_f1']:.4f} -> {result['compressed']['macro_f1']:.4f}, "
          f"ECE {result['compressed']['ece']:.4f} (T {result['compressed']['temperature']:.3f})")


if __name__ == "__main__":
    run_main(main)
