"""label: merge every source of labels into one label per row, with provenance, and queue doubtful rows for review.

Reads the clean table and the DVC-tracked annotations folder (Label Studio JSON exports and filled-in
review CSVs). Each row may get a label from several sources: `source` (the data's own label through
`label_map`), `human` (one annotator), `consensus` (majority of several annotators), `rule` (labelling
functions in `tasks.<task>.label_rules`) and `model` (a classifier on pretrained-encoder features,
for unlabelled rows and for relabelling likely errors). `label.precedence` picks the winner.
Confident learning on out-of-fold probabilities flags likely label errors; `label.detection.action`
flags them for review, drops them to quarantine, or relabels them.

Writes the labelled rows (`label`, `label_source`, `label_confidence`, `label_annotators`,
`labeled_by`, `label_quality`, `suggested_label`, `suggested_score`, `review_reason`), a quarantine
(`missing_label`, `label_not_in_set`, `suspected_label_error`), the rejected annotations with a
reason, the review queue as Label Studio import JSON and CSV, and metrics.

`python -m stages.label export-review <task> --in <table> --out <tasks.json>` writes the same review
files for any table (for example the quarantine, to label unlabelled rows).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common import (
    StageError,
    atomic_path,
    build,
    load_params,
    quarantine_counts,
    read_parquet,
    run_main,
    section,
    task_params,
    write_json,
    write_parquet,
)
from stages.labeling import annotations as ann
from stages.labeling.auto import apply_rules, parse_rules
from stages.labeling.detect import classifier, detect, fit_proba

LABEL_SOURCES = ("human", "consensus", "rule", "model", "source")
ACTIONS = ("flag", "drop", "relabel")
# Review queue order: unresolved human disagreement first, then likely errors, then rows without a label.
REVIEW_REASONS = ("annotator_tie", "suspected_label_error", "low_confidence_auto_label", "unlabeled")
REJECTED_COLUMNS = ["file", "where", "item_id", "annotator", "label", "reason"]


@dataclass(frozen=True)
class DetectionParams:
    enabled: bool
    folds: int
    filter_by: str                 # cleanlab find_label_issues filter_by
    action: str                    # flag | drop | relabel
    relabel_threshold: float
    c: float                       # inverse L2 strength of the logistic regression
    max_iter: int


@dataclass(frozen=True)
class AutoLabelParams:
    enabled: bool
    model: str                     # logistic_regression | knn
    threshold: float
    knn_k: int


@dataclass(frozen=True)
class LabelParams:
    """`params.label`: how label sources are merged and checked."""
    precedence: list[str]
    feature_batch_size: int
    encoder: dict[str, dict[str, Any]]   # per modality: the frozen encoder spec whose features check rows
    detection: DetectionParams
    auto_label: AutoLabelParams


@dataclass(frozen=True)
class TaskLabels:
    """The label fields of `params.tasks.<task>`."""
    labels: list[str]
    label_map: dict[str, str]
    label_rules: list[dict]


@dataclass(frozen=True)
class LabelResult:
    kept: pd.DataFrame
    quarantine: pd.DataFrame
    rejected: pd.DataFrame         # annotations that could not be applied, each with a reason
    review: pd.DataFrame           # rows (kept or quarantined) that need a person, in review order
    metrics: dict


@dataclass
class _Candidates:
    """Per label source: the candidate label, its confidence and who produced it (None where absent)."""
    n: int
    label: dict[str, list] = field(default_factory=dict)
    confidence: dict[str, list] = field(default_factory=dict)
    by: dict[str, list] = field(default_factory=dict)
    annotators: dict[str, list] = field(default_factory=dict)

    def source(self, name: str) -> None:
        for store in (self.label, self.confidence, self.by, self.annotators):
            store.setdefault(name, [None] * self.n)

    def put(self, name: str, i: int, label: str, confidence: float, by: str, annotators: str = "") -> None:
        self.source(name)
        self.label[name][i], self.confidence[name][i] = label, float(confidence)
        self.by[name][i], self.annotators[name][i] = by, annotators

    def resolve(self, precedence: Sequence[str], *, exclude: Sequence[str] = ()) -> list[str | None]:
        """The winning label source per row (None where no source has a label)."""
        order = [s for s in precedence if s not in exclude and s in self.label]
        return [next((s for s in order if self.label[s][i] is not None), None) for i in range(self.n)]


def check_params(task: TaskLabels, params: LabelParams) -> None:
    if len(set(task.labels)) != len(task.labels):
        raise StageError(f"params.yaml: labels: duplicate entries in {task.labels}")
    if sorted(params.precedence) != sorted(LABEL_SOURCES):
        raise StageError(f"params.yaml: label.precedence: {params.precedence} must order each of "
                         f"{list(LABEL_SOURCES)} exactly once")
    if params.detection.action not in ACTIONS:
        raise StageError(f"params.yaml: label.detection.action: unknown action {params.detection.action!r}; "
                         f"known: {list(ACTIONS)}")
    for key, value in (("detection.relabel_threshold", params.detection.relabel_threshold),
                       ("auto_label.threshold", params.auto_label.threshold)):
        if not 0.0 <= value <= 1.0:
            raise StageError(f"params.yaml: label.{key}: {value} must be in [0, 1]")
    if params.detection.folds < 2:
        raise StageError(f"params.yaml: label.detection.folds: {params.detection.folds} must be at least 2")
    if params.auto_label.model not in ("logistic_regression", "knn"):
        raise StageError(f"params.yaml: label.auto_label.model: unknown model {params.auto_label.model!r}; "
                         "known: ['knn', 'logistic_regression']")


def map_source_label(value: object, label_map: dict[str, str]) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)) or not str(value).strip():
        return None
    return label_map.get(str(value).strip(), str(value).strip())


def needs_features(frame: pd.DataFrame, task: TaskLabels, params: LabelParams) -> bool:
    """Whether `label` will use encoder features: detection is on, or unlabelled rows wait for the auto-labeller."""
    unlabeled = frame["label"].map(lambda v: map_source_label(v, task.label_map) is None).any()
    return params.detection.enabled or (params.auto_label.enabled and bool(unlabeled))


@dataclass
class _Review:
    """Per row: why it is queued for a person, the model's suggested label and score, and the label's quality."""
    reason: list[str | None]
    suggested: list[str | None]
    suggested_score: np.ndarray
    quality: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Review:
        return cls([None] * n, [None] * n, np.full(n, np.nan), np.full(n, np.nan))

    def queue(self, i: int, reason: str) -> None:
        self.reason[i] = self.reason[i] or reason


def label(frame: pd.DataFrame, task: TaskLabels, params: LabelParams, *, payload_column: str, seed: int,
          annotations: ann.Parsed | None = None, features: np.ndarray | None = None) -> LabelResult:
    """Merge source, human, consensus, rule and model labels by precedence; check labels; queue rows for review.

    `features` are encoder embeddings aligned with `frame`'s rows; without them detection and the
    model auto-labeller are skipped (and say so in metrics). Each label source fills its candidates in turn
    (`source_candidates`, `human_candidates`, `rule_candidates`, `detect_errors`, `model_candidates`); then
    `assemble` picks the winners and builds the tables and metrics.
    """
    check_params(task, params)
    if features is not None and len(features) != len(frame):
        raise StageError(f"features: {len(features)} rows for {len(frame)} table rows")
    annotations = annotations or ann.Parsed([], 0, 0)
    n = len(frame)
    cand = _Candidates(n)
    for name in LABEL_SOURCES:
        cand.source(name)
    review = _Review.empty(n)
    mapped = source_candidates(cand, frame, task)
    human = human_candidates(cand, review, annotations, ids=[str(i) for i in frame["id"]], task=task, mapped=mapped)
    rules = rule_candidates(cand, frame, task, payload_column=payload_column, mapped=mapped)
    drop, detection_metrics = detect_errors(cand, review, task, params, features=features, seed=seed)
    auto_metrics = model_candidates(cand, review, task, params, features=features, seed=seed, mapped=mapped,
                                    drop=drop)
    return assemble(frame, cand, review, task, params, mapped=mapped, drop=drop, annotations=annotations,
                    human=human, detection_metrics=detection_metrics, auto_metrics={**rules, **auto_metrics})


def source_candidates(cand: _Candidates, frame: pd.DataFrame, task: TaskLabels) -> list[str | None]:
    """The data's own labels through `label_map`: the `source` candidates. Returns every row's mapped label."""
    index = set(task.labels)
    mapped = [map_source_label(v, task.label_map) for v in frame["label"]]
    for i, lab in enumerate(mapped):
        if lab is not None and lab in index:
            cand.put("source", i, lab, 1.0, "source")
    return mapped


def human_candidates(cand: _Candidates, review: _Review, annotations: ann.Parsed, *, ids: list[str],
                     task: TaskLabels, mapped: list[str | None]) -> dict[str, Any]:
    """Human labels: one annotator is `human`, several are decided by majority vote as `consensus`; a tie is
    queued for review. Returns the accepted and rejected annotations, the votes and how many labels changed."""
    accepted, rejected = ann.check(annotations.annotations, known_ids=set(ids), labels=list(task.labels),
                                   label_map=task.label_map)
    votes = ann.vote(accepted)
    row_of = {item: i for i, item in enumerate(ids)}
    changed = 0
    for item, v in votes.items():
        i = row_of[item]
        if v.tie:
            review.queue(i, "annotator_tie")
            continue
        kind = "human" if len(v.annotators) == 1 else "consensus"
        cand.put(kind, i, v.label, v.confidence, "annotators", ",".join(v.annotators))
        changed += mapped[i] != v.label
    return {"accepted": accepted, "rejected": rejected, "votes": votes, "changed": changed}


def rule_candidates(cand: _Candidates, frame: pd.DataFrame, task: TaskLabels, *, payload_column: str,
                    mapped: list[str | None]) -> dict[str, Any]:
    """Labelling functions, for rows without a source label. Returns the unlabelled rows and rule conflicts."""
    rules = parse_rules(task.label_rules, labels=list(task.labels), where="tasks.<task>.label_rules")
    unlabeled = [i for i, lab in enumerate(mapped) if lab is None]
    rule_conflicts = 0
    if rules and unlabeled:
        texts = [frame[payload_column].iloc[i] for i in unlabeled]
        if not all(isinstance(t, str) for t in texts):
            raise StageError("params.yaml: tasks.<task>.label_rules: rules match text, but this task's payloads "
                             "are not text")
        for i, rv in zip(unlabeled, apply_rules(texts, rules)):
            if rv.label is not None:
                cand.put("rule", i, rv.label, rv.confidence, "rules:" + ",".join(rv.fired))
            elif rv.fired:
                rule_conflicts += 1
    return {"unlabeled_rows": len(unlabeled), "rule_conflicts": rule_conflicts,
            "by_rule": int(sum(1 for i in unlabeled if cand.label["rule"][i] is not None))}


def detect_errors(cand: _Candidates, review: _Review, task: TaskLabels, params: LabelParams, *,
                  features: np.ndarray | None, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Label-error detection on every row that has a non-model label: flag, drop or relabel (`detection.action`).
    Returns the rows to drop and the detection metrics."""
    labels = list(task.labels)
    index = {lab: i for i, lab in enumerate(labels)}
    n = cand.n
    winner = cand.resolve(params.precedence, exclude=("model",))
    detection_metrics: dict[str, Any] = {"ran": False, "action": params.detection.action}
    drop = np.zeros(n, dtype=bool)
    dp = params.detection
    if not dp.enabled:
        detection_metrics["skipped"] = "disabled"
        return drop, detection_metrics
    if features is None:
        detection_metrics["skipped"] = "no features"
        return drop, detection_metrics
    rows = np.array([i for i in range(n) if winner[i] is not None], dtype=np.int64)
    given = np.array([index[cand.label[winner[i]][i]] for i in rows], dtype=np.int64)
    result = detect(features[rows], given, n_classes=len(labels), folds=dp.folds, seed=seed, c=dp.c,
                    max_iter=dp.max_iter, filter_by=dp.filter_by) if len(rows) else None
    if result is None or not result.folds:
        detection_metrics["skipped"] = "fewer than two classes with two or more labelled rows"
        return drop, detection_metrics
    counts = {"suspected_label_errors": 0, "flagged_to_review": 0, "dropped": 0, "relabelled": 0,
              "not_acted_on_human_labels": 0}
    for j, i in enumerate(rows):
        if not result.checked[j]:
            continue
        p = result.proba[j]
        review.quality[i] = p[given[j]]
        review.suggested[i], review.suggested_score[i] = labels[int(p.argmax())], float(p.max())
        if result.issue_rank[j] < 0:
            continue
        counts["suspected_label_errors"] += 1
        if winner[i] in ("human", "consensus"):
            counts["not_acted_on_human_labels"] += 1  # people already decided this row
            continue
        if dp.action == "drop":
            drop[i] = True
            counts["dropped"] += 1
        elif dp.action == "relabel" and p.max() >= dp.relabel_threshold and int(p.argmax()) != given[j]:
            cand.put("model", i, labels[int(p.argmax())], float(p.max()), "model:logistic_regression(relabel)")
            counts["relabelled"] += 1
        else:
            review.queue(i, "suspected_label_error")
            counts["flagged_to_review"] += 1
    checked = result.checked
    oof_acc = float((result.proba[checked].argmax(1) == given[checked]).mean()) if checked.any() else None
    detection_metrics.update(ran=True, folds=result.folds, rows_checked=int(checked.sum()), oof_accuracy=oof_acc,
                             **counts)
    return drop, detection_metrics


def model_candidates(cand: _Candidates, review: _Review, task: TaskLabels, params: LabelParams, *,
                     features: np.ndarray | None, seed: int, mapped: list[str | None], drop: np.ndarray
                     ) -> dict[str, Any]:
    """Model labels for rows still without any label: confident ones become `model` candidates, the rest are
    queued for review. Returns the auto-labeller's counts."""
    labels = list(task.labels)
    index = {lab: i for i, lab in enumerate(labels)}
    ap, dp = params.auto_label, params.detection
    winner = cand.resolve(params.precedence)
    waiting = [i for i in range(cand.n) if winner[i] is None and mapped[i] is None]
    by_model = to_review = 0
    if ap.enabled and features is not None and waiting:
        train_rows = [i for i in range(cand.n) if winner[i] is not None and not drop[i]]
        if len({cand.label[winner[i]][i] for i in train_rows}) >= 2:
            y = np.array([index[cand.label[winner[i]][i]] for i in train_rows])
            model = classifier(kind=ap.model, c=dp.c, max_iter=dp.max_iter,
                               knn_k=min(ap.knn_k, len(train_rows)), seed=seed)
            proba = fit_proba(model, features[train_rows], y, features[waiting], len(labels))
            for i, p in zip(waiting, proba):
                review.suggested[i], review.suggested_score[i] = labels[int(p.argmax())], float(p.max())
                if p.max() >= ap.threshold:
                    cand.put("model", i, labels[int(p.argmax())], float(p.max()), f"model:{ap.model}")
                    by_model += 1
                else:
                    review.queue(i, "low_confidence_auto_label")
                    to_review += 1
    return {"by_model": by_model, "to_review": to_review}


def assemble(frame: pd.DataFrame, cand: _Candidates, review: _Review, task: TaskLabels, params: LabelParams, *,
             mapped: list[str | None], drop: np.ndarray, annotations: ann.Parsed, human: dict[str, Any],
             detection_metrics: dict[str, Any], auto_metrics: dict[str, Any]) -> LabelResult:
    """Final labels by precedence, with provenance; the kept rows, the quarantine, the review queue and metrics."""
    labels = list(task.labels)
    n = cand.n
    winner = cand.resolve(params.precedence)
    out = frame.copy()
    out["source_label"] = frame["label"]
    out["label"] = [cand.label[w][i] if w else mapped[i] for i, w in enumerate(winner)]
    out["label_source"] = [w or "source" for w in winner]
    out["label_confidence"] = [cand.confidence[w][i] if w else 0.0 for i, w in enumerate(winner)]
    out["label_annotators"] = [cand.annotators[w][i] if w else "" for i, w in enumerate(winner)]
    out["labeled_by"] = [cand.by[w][i] if w else "" for i, w in enumerate(winner)]
    out["label_quality"] = review.quality
    out["suggested_label"] = review.suggested
    out["suggested_score"] = review.suggested_score
    reason = pd.Series(None, index=frame.index, dtype="object")
    for i, w in enumerate(winner):
        if w is None:
            reason.iloc[i] = "missing_label" if mapped[i] is None else "label_not_in_set"
            if mapped[i] is None:
                review.queue(i, "unlabeled")
        elif drop[i] and w not in ("human", "consensus"):
            reason.iloc[i] = "suspected_label_error"
    out["review_reason"] = review.reason
    keep = reason.isna().to_numpy()
    kept = out[keep].reset_index(drop=True)
    quarantine = out[~keep].copy()
    quarantine["quarantine_reason"] = reason[~keep]
    quarantine = quarantine.reset_index(drop=True)

    queue = out[out["review_reason"].notna()].copy()
    queue["_order"] = queue["review_reason"].map({r: k for k, r in enumerate(REVIEW_REASONS)})
    queue = queue.sort_values(["_order", "label_quality", "id"], kind="stable", na_position="last")
    queue = queue.drop(columns="_order").reset_index(drop=True)
    accepted, rejected, votes = human["accepted"], human["rejected"], human["votes"]
    rejected_frame = pd.DataFrame(rejected, columns=REJECTED_COLUMNS).astype(object)

    annotation_metrics = {
        "annotations_in": len(annotations.annotations),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "rejected_by_reason": {k: int(v) for k, v in
                               pd.Series([r["reason"] for r in rejected], dtype=object).value_counts().sort_index().items()},
        "blank_csv_rows": annotations.blank_rows,
        "unannotated_tasks": annotations.unannotated_tasks,
        "items_annotated": len(votes),
        "annotators": len({a.annotator for a in accepted}),
        "ties": sum(v.tie for v in votes.values()),
        "labels_changed_from_source": int(human["changed"]),
        "agreement": ann.agreement(accepted, labels),
    }
    metrics = {
        "rows_in": n,
        "rows_kept": len(kept),
        "rows_quarantined": len(quarantine),
        "quarantined_by_reason": quarantine_counts(quarantine),
        "per_label": {lab: int((kept["label"] == lab).sum()) for lab in labels},
        "per_label_source": {str(k): int(v) for k, v in kept["label_source"].value_counts().sort_index().items()},
        "annotations": annotation_metrics,
        "detection": detection_metrics,
        "auto_label": auto_metrics,
        "review_queue": {"rows": len(queue),
                         "by_reason": {str(k): int(v) for k, v in queue["review_reason"].value_counts().sort_index().items()}},
    }
    return LabelResult(kept, quarantine, rejected_frame, queue, metrics)


# ---------------------------------------------------------------- main


def read_annotation_folder(folder: Path) -> ann.Parsed:
    """Every annotation file under `folder` (name order); notes (`*.md`, `*.txt`) and dotfiles are skipped."""
    if not folder.is_dir():
        raise StageError(f"{folder}: annotations folder not found (create it, e.g. with a README.md, and commit it)")
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts) or path.suffix.lower() in ann.IGNORED_SUFFIXES:
            continue
        try:
            files.append((str(path), path.read_text(encoding="utf-8-sig")))
        except UnicodeDecodeError as exc:
            raise StageError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return ann.parse_files(files)


def load_label_params(params: dict[str, Any], task_name: str) -> tuple[TaskLabels, LabelParams]:
    task = task_params(params, task_name)
    # label_rules is opt-in (text tasks with unlabelled rows); labels and label_map stay required
    values = {"label_rules": [], **{k: task[k] for k in ("labels", "label_map", "label_rules") if k in task}}
    tl = build(TaskLabels, values, f"tasks.{task_name}")
    return tl, build(LabelParams, section(params, "label"), "label")


def write_review(queue: pd.DataFrame, *, json_path: str | Path, csv_path: str | Path, modality: Any,
                 model_version: str) -> None:
    from stages.labeling import review

    column, show = modality.payload_column, modality.review_value
    tasks = review.label_studio_tasks(queue, payload_column=column, model_version=model_version, show=show)
    with atomic_path(json_path) as tmp:
        tmp.write_text(review.dumps_tasks(tasks), encoding="utf-8")
    with atomic_path(csv_path) as tmp:
        tmp.write_text(review.review_csv(queue, payload_column=column, show=show), encoding="utf-8")


def main_label(argv: Sequence[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True)
    parser.add_argument("--annotations", required=True, help="folder of Label Studio JSON exports / review CSVs")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quarantine", required=True)
    parser.add_argument("--rejected", required=True, help="Parquet of annotations that could not be applied")
    parser.add_argument("--review-json", required=True, help="review queue, Label Studio task import JSON")
    parser.add_argument("--review-csv", required=True, help="review queue as CSV")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--feature-store", required=True,
                        help="folder of encoder features by row id (.npz), kept across runs and shared with train")
    args = parser.parse_args(argv)

    from stages.modalities import check_backbone, modality_section, task_modality

    params = load_params()
    tl, lp = load_label_params(params, args.task)
    check_params(tl, lp)
    modality = task_modality(params, args.task)
    where = f"label.encoder.{modality.name}"
    spec = check_backbone(modality, dict(modality_section(lp.encoder, modality, "label.encoder")), where)
    frame = read_parquet(args.inp)
    for column in ("id", "label", modality.payload_column):
        if column not in frame.columns:
            raise StageError(f"{args.inp}: column {column!r} not found; columns: {list(frame.columns)}")
    parsed = read_annotation_folder(Path(args.annotations))
    features = None
    if needs_features(frame, tl, lp) and len(frame):
        from stages.engine import engine_params, open_engine
        from stages.labeling.features import cached_extract, store_path

        with open_engine(engine_params(params)) as engine:  # base.engine: encoder batches on an actor pool
            features = cached_extract(modality, spec, [str(i) for i in frame["id"]],
                                      list(frame[modality.payload_column]), batch_size=lp.feature_batch_size,
                                      cache_path=store_path(args.feature_store, args.task, modality, spec),
                                      desc=f"label features {args.task}", engine=engine)
    result = label(frame, tl, lp, payload_column=modality.payload_column, seed=int(section(params, "base.seed")),
                   annotations=parsed, features=features)
    write_parquet(args.quarantine, result.quarantine)
    write_parquet(args.rejected, result.rejected)
    write_review(result.review, json_path=args.review_json, csv_path=args.review_csv, modality=modality,
                 model_version=model_version(spec))
    from stages.contracts import check  # data contract at the label -> split boundary
    check(result.kept, "labeled", where=args.out, labels=tl.labels)
    write_parquet(args.out, result.kept)
    write_json(args.metrics, result.metrics)
    m = result.metrics
    print(f"label {args.task}: kept {len(result.kept)}, quarantined {m['quarantined_by_reason']}, "
          f"by source {m['per_label_source']}, suspected errors {m['detection'].get('suspected_label_errors')}, "
          f"review queue {m['review_queue']['rows']}, annotations rejected {m['annotations']['rejected']}")


def model_version(spec: dict[str, Any]) -> str:
    return f"label-check:logistic_regression+{spec.get('backbone')}"


def main_export_review(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.label export-review",
                                     description="Write a table's rows as a Label Studio import JSON review queue "
                                                 "(and the same queue as CSV).")
    parser.add_argument("task")
    parser.add_argument("--in", dest="inp", required=True, help="Parquet table (labeled, quarantine, ...)")
    parser.add_argument("--out", required=True, help="Label Studio task import JSON")
    parser.add_argument("--csv", help="the same queue as CSV (default: --out with .csv)")
    parser.add_argument("--config", help="also write the matching Label Studio labelling config (XML)")
    parser.add_argument("--only-queued", action="store_true", help="only rows with a review_reason")
    args = parser.parse_args(argv)

    from stages.labeling import review
    from stages.modalities import modality_section, task_modality

    params = load_params()
    tl, _ = load_label_params(params, args.task)
    modality = task_modality(params, args.task)
    frame = read_parquet(args.inp)
    for column in ("id", modality.payload_column):
        if column not in frame.columns:
            raise StageError(f"{args.inp}: column {column!r} not found; columns: {list(frame.columns)}")
    if args.only_queued:
        if "review_reason" not in frame.columns:
            raise StageError(f"{args.inp}: column 'review_reason' not found (use a table written by the label stage)")
        frame = frame[frame["review_reason"].notna()]
    spec = dict(modality_section(section(params, "label.encoder"), modality, "label.encoder"))
    csv_path = args.csv or str(Path(args.out).with_suffix(".csv"))
    write_review(frame, json_path=args.out, csv_path=csv_path, modality=modality, model_version=model_version(spec))
    if args.config:
        with atomic_path(args.config) as tmp:
            tmp.write_text(review.label_config(tl.labels, payload_column=modality.payload_column,
                                               tag=modality.label_studio_tag))
    print(f"export-review {args.task}: {len(frame)} tasks -> {args.out}, {csv_path}")


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export-review"]:
        main_export_review(argv[1:])
    else:
        main_label(argv)


if __name__ == "__main__":
    run_main(main)
