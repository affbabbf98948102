"""register: log the evaluated model to the MLflow Model Registry and decide its alias.

Reads the model folder, the training summary and the evaluation metrics. Logs a pyfunc model
(signature and input example included) to the training run, registers a new version tagged
with the git commit and the DVC md5 of its training data, and moves alias `champion` to it only if
its test macro-F1 beats the current champion's; otherwise it gets `challenger`.
Writes `registered.json` with name, version, alias, run id and the decision's reason.

The logged model carries `serving_rules.json` (the task modality's `clean.by_modality` params and
`serve.min_confidence`): serving screens every input row with clean's rules first (`stages/inference.py`).

With `register.compressed` on, the compress stage's model folder is registered too, as the next version
of the same registered model with alias `<alias>-compressed` (e.g. `champion-compressed`) and tag
`variant=compressed`, provided its test macro-F1 is no more than `max_compressed_f1_drop` below the
uncompressed model's; `registered.json` records that version or why it was skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from stages.common import StageError, build, load_params, run_main, section, write_json

SERVING_FILE = Path(__file__).with_name("serving.py")
SERVING_PACKAGES = ("torch", "torchvision", "transformers", "tokenizers", "safetensors", "efficientnet-lite-pytorch",
                    "pillow", "numpy", "pandas", "mlflow", "scikit-learn", "tqdm", "pyyaml", "ftfy")


@dataclass(frozen=True)
class RegisterParams:
    model_name: str
    promote_metric: str
    min_improvement: float
    min_margin_over_baseline: float
    compressed: bool
    max_compressed_f1_drop: float


@dataclass(frozen=True)
class Decision:
    alias: str
    reason: str


def decide(candidate: float, champion: float | None, *, min_improvement: float, same_test_data: bool = True,
           checks_passed: bool = True, baseline: tuple[str, float] | None = None,
           min_margin_over_baseline: float = 0.0) -> Decision:
    """The promotion gate.

    `champion` only if the data checks passed, the candidate beats the best simple baseline scored on the same
    test rows (`baseline` = (name, value)) by more than `min_margin_over_baseline`, and either there is no
    champion yet or, on the same test data, the candidate beats it by more than `min_improvement`;
    otherwise `challenger`.
    """
    if not checks_passed:
        return Decision("challenger", "data checks (leakage or contracts) failed: never promoted")
    if baseline is not None and not candidate > baseline[1] + min_margin_over_baseline:
        return Decision("challenger", f"candidate {candidate:.4f} does not beat baseline {baseline[0]} "
                                      f"{baseline[1]:.4f} by more than {min_margin_over_baseline:g}")
    if champion is None:
        return Decision("champion", "no champion yet")
    if not same_test_data:
        return Decision("challenger", "champion was scored on different test data: no comparison")
    if candidate > champion + min_improvement:
        return Decision("champion", f"candidate {candidate:.4f} beats champion {champion:.4f} by more than "
                                    f"{min_improvement:g}")
    return Decision("challenger", f"candidate {candidate:.4f} does not beat champion {champion:.4f} by more than "
                                  f"{min_improvement:g}")


def best_baseline(metrics: dict[str, Any], key: str) -> tuple[str, float] | None:
    """The best baseline in `eval.json` by `key` (the promoted metric), as (name, value); None without any."""
    scored = [(name, float(row[key])) for name, row in metrics.get("baseline", {}).items() if key in row]
    return max(scored, key=lambda item: item[1]) if scored else None


def metric_tag(value: float) -> str:
    """A metric as a model-version tag, losslessly: the gate compares it exactly with the next candidate."""
    return repr(float(value))


def tag_metric(tags: dict[str, str], key: str) -> float | None:
    """The metric a version was tagged with, or None when it has none."""
    value = float(tags.get(key, "nan"))
    return None if math.isnan(value) else value


def data_checks_passed(split_metrics: dict[str, Any]) -> tuple[bool, str]:
    """False when the split stage recorded any leakage or contract violation."""
    bad = {}
    for key in ("leakage", "contract_violations"):
        value = split_metrics.get(key)
        if isinstance(value, dict):
            bad.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, (int, float)) and v > 0})
        elif isinstance(value, (int, float)) and value > 0:
            bad[key] = value
    return not bad, ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))


def render_card(*, name: str, version: int, task: str, modality: str, labels: list[str], summary: dict[str, Any],
                evaluation: dict[str, Any], data: dict[str, Any], decision: Decision) -> str:
    """The model card: task, data version, study, test metrics overall and per class, limitations."""
    lines = [
        f"# Model card: {name} v{version}", "",
        f"- **Task**: `{task}` ({modality} classification, {len(labels)} classes: {', '.join(labels)})",
        f"- **Alias at registration**: `{decision.alias}` ({decision.reason})", "",
        "## Data version", "",
        f"- Training table md5 (DVC): `{summary['train_data_md5']}`",
        f"- Test set digest: `{evaluation.get('test_digest', 'n/a')}`",
    ]
    lines += [f"- `{k}`: `{v}`" for k, v in sorted(data.get("hashes", {}).items())]
    lines += [f"- Rows per split: {data.get('rows_per_split', {})}",
              f"- Sources: {', '.join(data.get('sources', [])) or 'n/a'}",
              f"- Licences: {', '.join(data.get('licenses', [])) or 'n/a'}", "",
              "## Study", "",
              f"- Optuna study `{summary['study_name']}`: {summary.get('n_trials')} trials, "
              f"{summary.get('n_complete')} complete, {summary.get('n_pruned')} pruned, {summary.get('n_failed')} failed",
              f"- Best trial {summary.get('best_trial')} (best epoch {summary.get('best_epoch')}), "
              f"params: `{summary.get('best_params')}`", *method_lines(summary.get("method")), "",
              "## Test metrics", "",
              "| metric | value |", "|---|---|"]
    for key in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall", "roc_auc", "log_loss"):
        value = evaluation.get(key)
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | n/a |")
    lines += calibration_lines(evaluation)
    baselines = evaluation.get("baseline", {})
    if baselines:
        lines += ["", "## Against simple baselines (same train rows, same test rows)", "",
                  "| model | test macro-F1 | test accuracy | fit seconds |", "|---|---|---|---|",
                  f"| this model | {evaluation['macro_f1']:.4f} | {evaluation['accuracy']:.4f} | |"]
        lines += [f"| baseline `{b}` | {row['macro_f1']:.4f} | {row['accuracy']:.4f} | {row['fit_seconds']:.1f} |"
                  for b, row in baselines.items()]
        lines += ["", f"Margin over the best baseline (macro-F1): {evaluation.get('margin_macro_f1', 0.0):+.4f}"]
    lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for lab, row in evaluation.get("per_class", {}).items():
        lines.append(f"| {lab} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1-score']:.4f} | "
                     f"{int(row['support'])} |")
    weakest = min(evaluation.get("per_class", {}).items(), key=lambda kv: kv[1]["f1-score"], default=None)
    lines += ["", "## Known limitations", "",
              "- Trained and evaluated only on the data version above; other domains, languages or image styles "
              "are out of scope.",
              "- Test metrics come from one held-out split; small classes have wide confidence intervals."]
    if weakest:
        lines.append(f"- Weakest class: `{weakest[0]}` (test F1 {weakest[1]['f1-score']:.4f}).")
    return "\n".join(lines) + "\n"


def method_lines(method: dict[str, Any] | None) -> list[str]:
    """How the model was trained (train's `method`): the method, trainable parameters, and a kept adapter's size."""
    if not method:
        return []
    line = f"- Method `{method['method']}`: {method['trainable_parameters']:,} trainable parameters"
    if "adapter_parameters" in method:
        line += f", adapter {method['adapter_parameters']:,} parameters"
        line += " (merged into the weights)" if method.get("merged") else ""
    if "adapter_bytes" in method:
        line += f", {method['adapter_bytes']:,} bytes on disk (adapter.safetensors)"
    return [line]


def calibration_lines(evaluation: dict[str, Any]) -> list[str]:
    """The card's calibration section: the temperature and the test ECE with and without it."""
    if "ece" not in evaluation:
        return []
    return ["", "## Calibration", "",
            f"- Confidences are calibrated by temperature scaling, fitted on the validation rows: softmax(logits / T), "
            f"T = {evaluation['temperature']:.4f} (the arg-max, so accuracy, is unchanged).",
            f"- Test expected calibration error (15 equal-width bins): {evaluation['ece']:.4f} calibrated, "
            f"{evaluation['ece_uncalibrated']:.4f} uncalibrated.",
            "- Serving applies the clean stage's rules first: a row clean would quarantine gets no label, "
            "`rejected` names the reason."]


def compressed_calibration(compress_metrics: dict[str, Any]) -> str:
    """One sentence on the compressed variant's own temperature and test ECE (empty for older metrics)."""
    small = compress_metrics.get("compressed", {})
    if "ece" not in small:
        return ""
    return (f" Calibrated the same way (temperature scaling on the validation rows): T = {small['temperature']:.4f}, "
            f"test ECE {small['ece']:.4f} calibrated, {small['ece_uncalibrated']:.4f} uncalibrated.")


def compressed_decision(compress_metrics: dict[str, Any], *, enabled: bool, max_drop: float,
                        baseline: tuple[str, float] | None = None, min_margin_over_baseline: float = 0.0
                        ) -> tuple[bool, str]:
    """Whether to register the compressed variant, and why: within `max_drop` of the model, and (like the model)
    above the best baseline (`baseline` = (name, macro-F1)) by more than `min_margin_over_baseline`."""
    if not enabled:
        return False, "register.compressed is off"
    delta = float(compress_metrics["macro_f1_delta"])
    if -delta > max_drop:
        return False, f"test macro-F1 drops {-delta:.4f}, more than register.max_compressed_f1_drop {max_drop:g}"
    small = float(compress_metrics["compressed"]["macro_f1"])
    if baseline is not None and not small > baseline[1] + min_margin_over_baseline:
        return False, (f"test macro-F1 {small:.4f} does not beat baseline {baseline[0]} {baseline[1]:.4f} by more "
                       f"than {min_margin_over_baseline:g}")
    return True, (f"test macro-F1 {compress_metrics['compressed']['macro_f1']:.4f} ({delta:+.4f}), size "
                  f"x{compress_metrics['size_ratio']:.2f}, CPU speed x{compress_metrics['speedup']:.2f}")


def model_name(params: RegisterParams, task: str) -> str:
    return params.model_name.format(task=task)


def input_example(modality: Any, frame: Any) -> Any:
    import pandas as pd

    column = modality.payload_column
    return pd.DataFrame({column: list(frame[column].head(2))})


def data_summary(frame: Any, lock_hashes: dict[str, str]) -> dict[str, Any]:
    return {
        "hashes": lock_hashes,
        "rows_per_split": {str(k): int(v) for k, v in frame["split"].value_counts().sort_index().items()},
        "sources": sorted(frame["source"].dropna().astype(str).unique()) if "source" in frame else [],
        "licenses": sorted(frame["license"].dropna().astype(str).unique()) if "license" in frame else [],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True, help="the training data table (input example, card)")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--summary", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--split-metrics", required=True, help="the split stage's metrics (leakage/contract checks)")
    parser.add_argument("--compressed-dir", required=True, help="the compress stage's model folder")
    parser.add_argument("--compress-metrics", required=True, help="the compress stage's metrics JSON")
    parser.add_argument("--card", required=True, help="where to write the model card (Markdown)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    from stages import tracking
    from stages.common import atomic_path, read_parquet
    from stages.inference import RULES_FILE, ServeParams, output_schema, serving_rules, write_rules
    from stages.modalities import modality_section, task_modality

    params = load_params()
    rp = build(RegisterParams, params.get("register"), "register")
    sp = build(ServeParams, params.get("serve"), "serve")
    summary = json.loads(Path(args.summary).read_text())
    metrics = json.loads(Path(args.eval).read_text())
    if rp.promote_metric not in metrics:
        raise StageError(f"params.yaml: register.promote_metric: {rp.promote_metric!r} not in {args.eval}")
    candidate = float(metrics[rp.promote_metric])
    checks_passed, check_failures = data_checks_passed(json.loads(Path(args.split_metrics).read_text()))
    modality = task_modality(params, args.task)
    name = model_name(rp, args.task)
    frame = read_parquet(args.inp)
    test = frame[frame["split"] == "test"].sort_values("id", kind="stable")
    example = input_example(modality, test)

    # the rules every served row passes first: the clean params this model's data went through, min_confidence
    rules = serving_rules(modality=modality.name, min_confidence=sp.min_confidence,
                          clean=modality_section(section(params, "clean.by_modality"), modality, "clean.by_modality"))
    modality.clean_params(rules["clean"])  # a typo fails here, not in the server

    def log_model(artifact_name: str, model_dir: str) -> Any:
        from mlflow.models import ModelSignature

        from stages.serving import ClassifierModel

        with tempfile.TemporaryDirectory() as tmp:
            rules_path = Path(tmp) / RULES_FILE
            write_rules(rules_path, rules)
            artifacts = {"model_dir": model_dir, "rules": str(rules_path)}
            serving = ClassifierModel()
            serving.load_context(type("Ctx", (), {"artifacts": artifacts})())
            labels = serving.config["labels"]
            serving.predict(None, example)  # fails here, not in the server
            return mlflow.pyfunc.log_model(
                name=artifact_name,
                python_model=str(SERVING_FILE),
                artifacts=artifacts,
                code_paths=[str(Path(__file__).parent)],
                signature=ModelSignature(inputs=infer_signature(example).inputs, outputs=output_schema(labels)),
                input_example=example,
                pip_requirements=[f"{p}=={metadata.version(p)}" for p in SERVING_PACKAGES],
            )

    compress_metrics = json.loads(Path(args.compress_metrics).read_text())
    with tracking.resume(params, summary["run_id"]) as run:
        info = log_model("model", args.model_dir)
        client = MlflowClient()
        tags = {"task": args.task, "data.md5": summary["train_data_md5"], "git.commit": tracking.git("rev-parse", "HEAD"),
                "study": summary["study_name"], "test_digest": metrics.get("test_digest", ""),
                rp.promote_metric: metric_tag(candidate), **tracking.lock_hashes(args.task)}
        version = mlflow.register_model(info.model_uri, name, tags=tags)
        try:
            current = client.get_model_version_by_alias(name, "champion")
            champion_value = tag_metric(current.tags, rp.promote_metric)
        except MlflowException:
            current, champion_value = None, None
        same_test = current is None or current.tags.get("test_digest") == metrics.get("test_digest")
        decision = decide(candidate, champion_value, min_improvement=rp.min_improvement, same_test_data=same_test,
                          checks_passed=checks_passed, baseline=best_baseline(metrics, rp.promote_metric),
                          min_margin_over_baseline=rp.min_margin_over_baseline)
        if not checks_passed:
            decision = Decision(decision.alias, f"{decision.reason} ({check_failures})")
        client.set_registered_model_alias(name, decision.alias, version.version)
        client.set_model_version_tag(name, version.version, "promotion", f"{decision.alias}: {decision.reason}")
        card = render_card(name=name, version=int(version.version), task=args.task, modality=modality.name,
                           labels=list(json.loads((Path(args.model_dir) / "classifier.json").read_text())["labels"]),
                           summary=summary, evaluation=metrics,
                           data=data_summary(frame, tracking.lock_hashes(args.task)), decision=decision)
        with atomic_path(args.card) as tmp:
            tmp.write_text(card)
        mlflow.log_artifact(args.card, "model_card")
        client.update_model_version(name, version.version, description=card)
        mlflow.set_tags({"registered_model": name, "registered_version": version.version})

        register_small, small_reason = compressed_decision(compress_metrics, enabled=rp.compressed,
                                                           max_drop=rp.max_compressed_f1_drop,
                                                           baseline=best_baseline(metrics, "macro_f1"),
                                                           min_margin_over_baseline=rp.min_margin_over_baseline)
        compressed: dict[str, Any] = {"registered": register_small, "reason": small_reason}
        if register_small:
            small_info = log_model("model_compressed", args.compressed_dir)
            small_metric = float(compress_metrics["compressed"]["macro_f1"])
            small_tags = {**tags, "variant": "compressed", "base_version": str(version.version),
                          rp.promote_metric: metric_tag(small_metric),
                          "compression": json.dumps({k: compress_metrics[k] for k in ("sparsity", "quantize")})}
            small = mlflow.register_model(small_info.model_uri, name, tags=small_tags)
            small_alias = f"{decision.alias}-compressed"
            client.set_registered_model_alias(name, small_alias, small.version)
            client.update_model_version(name, small.version, description=(
                f"Compressed variant of v{version.version} (L1 pruning at sparsity {compress_metrics['sparsity']:g}"
                f"{', int8 dynamic quantisation' if compress_metrics['quantize'] else ''}; CPU inference): "
                f"{small_reason}.{compressed_calibration(compress_metrics)}\n\n{card}"))
            compressed.update(version=int(small.version), alias=small_alias, model_uri=f"models:/{name}/{small.version}",
                              **{rp.promote_metric: small_metric})

    write_json(args.out, {
        "name": name,
        "version": int(version.version),
        "alias": decision.alias,
        "reason": decision.reason,
        "run_id": run.info.run_id,
        "model_uri": f"models:/{name}/{version.version}",
        "data_md5": summary["train_data_md5"],
        "test_digest": metrics.get("test_digest"),
        rp.promote_metric: candidate,
        "previous_champion_version": int(current.version) if current is not None else None,
        "compressed": compressed,
    })
    print(f"register {args.task}: {name} v{version.version} -> {decision.alias} ({decision.reason})")
    if compressed["registered"]:
        print(f"register {args.task}: {name} v{compressed['version']} -> {compressed['alias']} ({small_reason})")
    else:
        print(f"register {args.task}: compressed variant not registered ({small_reason})")


if __name__ == "__main__":
    run_main(main)
