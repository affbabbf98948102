"""Human annotations: parse Label Studio JSON exports and filled-in review CSVs, check them, vote, agree.

A file that cannot be read as an annotation file (bad JSON, wrong shape, a missing field) is a
one-line `StageError` naming the file, the task or row, and the field. An annotation that is well
formed but cannot be applied (unknown item id, label outside the set, cancelled, superseded by the
same annotator's later annotation) is rejected with a named reason, never silently dropped:
annotations in = accepted + rejected.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from stages.common import StageError

# Column and key names shared by the export (review.py) and the import below.
ITEM_ID = "item_id"
LABEL_FIELD = "label"
ANNOTATOR_FIELD = "annotator"


@dataclass(frozen=True)
class Annotation:
    file: str
    where: str          # "task 12" or "row 7": where in the file, for messages
    item_id: str
    annotator: str
    label: str | None   # None when the annotation carries no single label (see `problem`)
    problem: str | None = None  # a rejection reason found while parsing: cancelled, empty_result, ...


@dataclass(frozen=True)
class Vote:
    label: str | None   # None on a tie
    confidence: float   # share of annotators who chose `label`
    annotators: tuple[str, ...]
    tie: bool


@dataclass(frozen=True)
class Parsed:
    annotations: list[Annotation]
    blank_rows: int     # CSV rows of the review queue nobody filled in: not annotations
    unannotated_tasks: int


# ---------------------------------------------------------------- parsing


def parse_label_studio(name: str, text: str) -> Parsed:
    """Annotations from a Label Studio JSON export (a list of tasks, each with `data` and `annotations`)."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StageError(f"{name}: invalid JSON: {exc}") from None
    if not isinstance(tasks, list):
        raise StageError(f"{name}: expected a list of tasks (Label Studio JSON export), got {type(tasks).__name__}")
    out: list[Annotation] = []
    unannotated = 0
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise StageError(f"{name}: task {index}: expected an object, got {type(task).__name__}")
        where = f"task {task.get('id', index)}"
        data = task.get("data")
        if not isinstance(data, dict):
            raise StageError(f"{name}: {where}: field 'data' missing or not an object")
        item_id = data.get(ITEM_ID)
        if not isinstance(item_id, str) or not item_id:
            raise StageError(f"{name}: {where}: field 'data.{ITEM_ID}' missing or not a string: {item_id!r}")
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise StageError(f"{name}: {where}: field 'annotations' is not a list: {annotations!r}")
        if not annotations:
            unannotated += 1
        for a_index, annotation in enumerate(annotations):
            out.append(_parse_ls_annotation(name, f"{where} annotation {a_index}", item_id, annotation))
    return Parsed(out, 0, unannotated)


def _parse_ls_annotation(name: str, where: str, item_id: str, annotation: object) -> Annotation:
    if not isinstance(annotation, dict):
        raise StageError(f"{name}: {where}: expected an object, got {type(annotation).__name__}")
    if "completed_by" not in annotation:
        raise StageError(f"{name}: {where}: field 'completed_by' missing")
    annotator = _annotator_id(annotation["completed_by"])
    if annotator is None:
        raise StageError(f"{name}: {where}: field 'completed_by' has no id: {annotation['completed_by']!r}")
    if annotation.get("was_cancelled"):
        return Annotation(name, where, item_id, annotator, None, "cancelled")
    result = annotation.get("result")
    if not isinstance(result, list):
        raise StageError(f"{name}: {where}: field 'result' missing or not a list: {result!r}")
    choices: list[str] = []
    for r_index, region in enumerate(result):
        if not isinstance(region, dict):
            raise StageError(f"{name}: {where}: result {r_index}: expected an object")
        if region.get("type") != "choices":
            continue
        value = region.get("value")
        picked = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(picked, list) or not all(isinstance(c, str) for c in picked):
            raise StageError(f"{name}: {where}: result {r_index}: field 'value.choices' is not a list of strings: "
                             f"{value!r}")
        choices.extend(picked)
    if not choices:
        return Annotation(name, where, item_id, annotator, None, "empty_result")
    if len(choices) > 1:
        return Annotation(name, where, item_id, annotator, None, "not_single_choice")
    return Annotation(name, where, item_id, annotator, choices[0])


def _annotator_id(completed_by: object) -> str | None:
    # Label Studio writes a user id (int) in exports, or a user object with `email`/`id` in some versions
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    if completed_by is None or isinstance(completed_by, bool) or str(completed_by).strip() == "":
        return None
    return str(completed_by).strip()


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection"); review.csv carries
# untrusted source text, so such cells are written with a leading apostrophe. The apostrophe itself is escaped
# too, so reading back is exact: drop one leading apostrophe.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_escape(value: object) -> object:
    """A cell value safe to open in a spreadsheet; `csv_unescape` gives the original back."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_unescape(value: object) -> object:
    if isinstance(value, str) and value.startswith("'"):
        return value[1:]
    return value


def parse_csv(name: str, text: str) -> Parsed:
    """Annotations from a filled-in review CSV: columns `item_id`, `label` and (optionally filled) `annotator`.

    A row with an empty `label` cell is an item nobody reviewed: counted as blank, not an annotation.
    An empty `annotator` cell names the file as the annotator (`csv:<file>`).
    """
    import pandas as pd

    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).map(csv_unescape)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageError(f"{name}: unreadable CSV: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for column in (ITEM_ID, LABEL_FIELD):
        if column not in frame.columns:
            raise StageError(f"{name}: column {column!r} not found; columns: {list(frame.columns)}")
    has_annotator = ANNOTATOR_FIELD in frame.columns
    out: list[Annotation] = []
    blank = 0
    for row_no, row in enumerate(frame.itertuples(index=False), start=2):  # row 1 is the header
        values = row._asdict()
        label = values[LABEL_FIELD].strip()
        item_id = values[ITEM_ID].strip()
        if not label:
            blank += 1
            continue
        if not item_id:
            raise StageError(f"{name}: row {row_no}: field {ITEM_ID!r} is empty (label {label!r})")
        annotator = (values[ANNOTATOR_FIELD].strip() if has_annotator else "") or f"csv:{name.rsplit('/', 1)[-1]}"
        out.append(Annotation(name, f"row {row_no}", item_id, annotator, label))
    return Parsed(out, blank, 0)


PARSERS = {".json": parse_label_studio, ".csv": parse_csv}
# Files in the annotations folder that are not annotations: notes for people, and DVC/git placeholders.
IGNORED_SUFFIXES = {".md", ".txt", ".dvc"}


def parse_files(files: Sequence[tuple[str, str]]) -> Parsed:
    """Parse `(name, text)` pairs in name order; the suffix picks the format."""
    annotations: list[Annotation] = []
    blank = unannotated = 0
    for name, text in sorted(files):
        suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
        if suffix not in PARSERS:
            raise StageError(f"{name}: unsupported annotation file; expected one of {sorted(PARSERS)}")
        parsed = PARSERS[suffix](name, text)
        annotations += parsed.annotations
        blank += parsed.blank_rows
        unannotated += parsed.unannotated_tasks
    return Parsed(annotations, blank, unannotated)


# ---------------------------------------------------------------- checking


def check(annotations: Iterable[Annotation], *, known_ids: set[str], labels: Sequence[str],
          label_map: Mapping[str, str]) -> tuple[list[Annotation], list[dict]]:
    """Split annotations into accepted ones and rejected records (each with a `reason`).

    Labels go through the task's `label_map` first, like source labels. The same annotator
    annotating one item twice keeps the later annotation (files in name order, then file order).
    """
    allowed = set(labels)
    accepted: list[Annotation] = []
    rejected: list[dict] = []
    for a in annotations:
        reason = a.problem
        if reason is None and a.item_id not in known_ids:
            reason = "unknown_item"
        if reason is None:
            mapped = label_map.get(a.label, a.label)
            if mapped not in allowed:
                reason = "unknown_label"
            else:
                a = Annotation(a.file, a.where, a.item_id, a.annotator, mapped)
        if reason is not None:
            rejected.append({**asdict(a), "reason": reason})
        else:
            accepted.append(a)
    latest: dict[tuple[str, str], int] = {}
    for i, a in enumerate(accepted):
        latest[(a.item_id, a.annotator)] = i
    keep = set(latest.values())
    rejected += [{**asdict(a), "reason": "superseded"} for i, a in enumerate(accepted) if i not in keep]
    for record in rejected:
        record.pop("problem", None)
    return [a for i, a in enumerate(accepted) if i in keep], rejected


# ---------------------------------------------------------------- voting and agreement


def vote(annotations: Iterable[Annotation]) -> dict[str, Vote]:
    """Majority vote per item; a tie between the top labels decides nothing (the item goes to review)."""
    by_item: dict[str, list[Annotation]] = defaultdict(list)
    for a in annotations:
        by_item[a.item_id].append(a)
    votes = {}
    for item_id, group in by_item.items():
        counts = Counter(a.label for a in group).most_common()
        annotators = tuple(sorted(a.annotator for a in group))
        tie = len(counts) > 1 and counts[0][1] == counts[1][1]
        votes[item_id] = Vote(None if tie else counts[0][0], counts[0][1] / len(group), annotators, tie)
    return votes


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters over the same items; None when chance agreement is total."""
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    c1, c2 = Counter(first), Counter(second)
    expected = sum(c1[k] * c2[k] for k in set(c1) | set(c2)) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from an items x categories matrix of rating counts (items may have different rater counts)."""
    rows = [list(r) for r in counts if sum(r) >= 2]
    if not rows:
        return None
    per_item = []
    for r in rows:
        n = sum(r)
        per_item.append((sum(c * c for c in r) - n) / (n * (n - 1)))
    p_bar = sum(per_item) / len(rows)
    total = sum(sum(r) for r in rows)
    shares = [sum(r[j] for r in rows) / total for j in range(len(rows[0]))]
    p_e = sum(s * s for s in shares)
    if p_e == 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def agreement(annotations: Sequence[Annotation], labels: Sequence[str]) -> dict | None:
    """Cohen's kappa when exactly two annotators took part, Fleiss' kappa for three or more.

    Only items with at least two annotations count. None when no item has two.
    """
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for a in annotations:
        by_item[a.item_id][a.annotator] = a.label
    shared = {item: ratings for item, ratings in by_item.items() if len(ratings) >= 2}
    if not shared:
        return None
    annotators = sorted({name for ratings in shared.values() for name in ratings})
    if len(annotators) == 2:
        first = [shared[item][annotators[0]] for item in sorted(shared)]
        second = [shared[item][annotators[1]] for item in sorted(shared)]
        return {"method": "cohen", "kappa": cohen_kappa(first, second), "items": len(shared), "annotators": 2}
    index = {lab: j for j, lab in enumerate(labels)}
    matrix = []
    for item in sorted(shared):
        row = [0] * len(labels)
        for lab in shared[item].values():
            row[index[lab]] += 1
        matrix.append(row)
    return {"method": "fleiss", "kappa": fleiss_kappa(matrix), "items": len(shared), "annotators": len(annotators)}
