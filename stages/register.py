"""register: log the evaluated model to the MLflow Model Registry and decide its alias.

Reads the model folder, the training summary and the evaluation metrics. Logs a pyfunc model
(signature and input example included) to the training run, registers a new version tagged
with the git commit and the DVC md5 of its training data, and moves alias `champion` to it only if
its test macro-F1 beats the current champion's; otherwise it gets `challenger`.
Writes `registered.json` with name, version, alias, run id and the decision's reason.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from stages.common import StageError, build, load_params, run_main, write_json

SERVING_FILE = Path(__file__).with_name("serving.py")
SERVING_PACKAGES = ("torch", "torchvision", "transformers", "tokenizers", "safetensors", "efficientnet-lite-pytorch",
                    "pillow", "numpy", "pandas", "mlflow", "scikit-learn", "tqdm", "pyyaml")


@dataclass(frozen=True)
class RegisterParams:
    model_name: str
    promote_metric: str
    min_improvement: float


@dataclass(frozen=True)
class Decision:
    alias: str
    reason: str


def decide(candidate: float, champion: float | None, *, min_improvement: float) -> Decision:
    """`champion` if there is none yet or the candidate beats it by more than `min_improvement`."""
    if champion is None:
        return Decision("champion", "no champion yet")
    if candidate > champion + min_improvement:
        return Decision("champion", f"candidate {candidate:.4f} beats champion {champion:.4f}")
    return Decision("challenger", f"candidate {candidate:.4f} does not beat champion {champion:.4f}")


def model_name(params: RegisterParams, task: str) -> str:
    return params.model_name.format(task=task)


def input_example(modality: Any, frame: Any) -> Any:
    import pandas as pd

    column = modality.payload_column
    return pd.DataFrame({column: list(frame[column].head(2))})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True, help="the training data table (for the input example)")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--summary", required=True)
    parser.add_argument("--eval", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    from stages import tracking
    from stages.common import read_parquet
    from stages.modalities import task_modality

    params = load_params()
    rp = build(RegisterParams, params.get("register"), "register")
    summary = json.loads(Path(args.summary).read_text())
    metrics = json.loads(Path(args.eval).read_text())
    if rp.promote_metric not in metrics:
        raise StageError(f"params.yaml: register.promote_metric: {rp.promote_metric!r} not in {args.eval}")
    candidate = float(metrics[rp.promote_metric])
    modality = task_modality(params, args.task)
    name = model_name(rp, args.task)
    frame = read_parquet(args.inp)
    test = frame[frame["split"] == "test"].sort_values("id", kind="stable")
    example = input_example(modality, test)

    with tracking.resume(params, summary["run_id"]) as run:
        from stages.serving import ClassifierModel

        serving = ClassifierModel()
        serving.load_context(type("Ctx", (), {"artifacts": {"model_dir": args.model_dir}})())
        signature = infer_signature(example, serving.predict(None, example))
        requirements = [f"{p}=={metadata.version(p)}" for p in SERVING_PACKAGES]
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVING_FILE),
            artifacts={"model_dir": args.model_dir},
            code_paths=[str(Path(__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
        )
        client = MlflowClient()
        tags = {"task": args.task, "data.md5": summary["train_data_md5"], "git.commit": tracking.git("rev-parse", "HEAD"),
                "study": summary["study_name"], rp.promote_metric: f"{candidate:.6f}"}
        version = mlflow.register_model(info.model_uri, name, tags=tags)
        try:
            current = client.get_model_version_by_alias(name, "champion")
            champion_value = float(current.tags.get(rp.promote_metric, "nan"))
            champion_value = None if champion_value != champion_value else champion_value
        except MlflowException:
            current, champion_value = None, None
        decision = decide(candidate, champion_value, min_improvement=rp.min_improvement)
        client.set_registered_model_alias(name, decision.alias, version.version)
        client.set_model_version_tag(name, version.version, "promotion", f"{decision.alias}: {decision.reason}")
        mlflow.set_tags({"registered_model": name, "registered_version": version.version})

    write_json(args.out, {
        "name": name,
        "version": int(version.version),
        "alias": decision.alias,
        "reason": decision.reason,
        "run_id": run.info.run_id,
        "model_uri": f"models:/{name}/{version.version}",
        "data_md5": summary["train_data_md5"],
        rp.promote_metric: candidate,
        "previous_champion_version": int(current.version) if current is not None else None,
    })
    print(f"register {args.task}: {name} v{version.version} -> {decision.alias} ({decision.reason})")


if __name__ == "__main__":
    run_main(main)
