"""Code tests for stages/labeling: annotation files (one test per malformed case), kappa on fixtures with
known values, the feature cache on the real text encoder, and per-label_source evaluation slices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stages.common import StageError
from stages.evaluate import evaluate_slices
from stages.label import read_annotation_folder
from stages.labeling import annotations as ann


def ls_task(item="r0", annotations=None, **extra):
    task = {"id": 1, "data": {"item_id": item, "text": "hello"}, **extra}
    task["annotations"] = annotations if annotations is not None else [
        {"completed_by": 1, "was_cancelled": False,
         "result": [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["tech"]}}]}]
    return task


def test_label_studio_export_parses():
    parsed = ann.parse_label_studio("e.json", json.dumps([ls_task(), ls_task("r1", annotations=[])]))
    assert [(a.item_id, a.annotator, a.label) for a in parsed.annotations] == [("r0", "1", "tech")]
    assert parsed.unannotated_tasks == 1


# One test per malformed case: each fails with one line naming the file, the place and the field.
MALFORMED_JSON = {
    "invalid_json": ("[{", r"e.json: invalid JSON"),
    "not_a_list": (json.dumps({"data": {}}), r"e.json: expected a list of tasks"),
    "task_not_object": (json.dumps([1]), r"e.json: task 0: expected an object"),
    "data_missing": (json.dumps([{"id": 5, "annotations": []}]), r"e.json: task 5: field 'data' missing"),
    "item_id_missing": (json.dumps([{"id": 5, "data": {"text": "x"}}]), r"e.json: task 5: field 'data.item_id'"),
    "annotations_not_list": (json.dumps([ls_task(annotations={"a": 1})]), r"task 1: field 'annotations' is not a list"),
    "annotation_not_object": (json.dumps([ls_task(annotations=["x"])]), r"task 1 annotation 0: expected an object"),
    "completed_by_missing": (json.dumps([ls_task(annotations=[{"result": []}])]),
                             r"task 1 annotation 0: field 'completed_by' missing"),
    "completed_by_empty": (json.dumps([ls_task(annotations=[{"completed_by": {}, "result": []}])]),
                           r"field 'completed_by' has no id"),
    "result_missing": (json.dumps([ls_task(annotations=[{"completed_by": 1}])]), r"field 'result' missing"),
    "choices_not_strings": (json.dumps([ls_task(annotations=[{"completed_by": 1, "result": [
        {"type": "choices", "value": {"choices": [3]}}]}])]), r"result 0: field 'value.choices' is not a list"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_JSON))
def test_malformed_label_studio_export_is_a_one_line_error(case):
    text, message = MALFORMED_JSON[case]
    with pytest.raises(StageError, match=message) as info:
        ann.parse_label_studio("e.json", text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("annotation", "problem"), [
    ({"completed_by": 1, "was_cancelled": True, "result": []}, "cancelled"),
    ({"completed_by": 1, "result": []}, "empty_result"),
    ({"completed_by": 1, "result": [{"type": "choices", "value": {"choices": ["a", "b"]}}]}, "not_single_choice"),
    ({"completed_by": 1, "result": [{"type": "textarea", "value": {"text": ["note"]}}]}, "empty_result"),
])
def test_unusable_annotation_is_kept_with_its_problem(annotation, problem):
    parsed = ann.parse_label_studio("e.json", json.dumps([ls_task(annotations=[annotation])]))
    assert [a.problem for a in parsed.annotations] == [problem]


MALFORMED_CSV = {
    "no_item_id_column": ("id,label\nr0,tech\n", r"r.csv: column 'item_id' not found"),
    "no_label_column": ("item_id,annotator\nr0,bob\n", r"r.csv: column 'label' not found"),
    "empty_item_id": ("item_id,label\n,tech\n", r"r.csv: row 2: field 'item_id' is empty"),
    "unparseable": ("item_id,label\n\"r0,tech\n", r"r.csv: unreadable CSV"),
    "empty_file": ("", r"r.csv: unreadable CSV"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_CSV))
def test_malformed_review_csv_is_a_one_line_error(case):
    text, message = MALFORMED_CSV[case]
    with pytest.raises(StageError, match=message) as info:
        ann.parse_csv("r.csv", text)
    assert "\n" not in str(info.value)


def test_csv_without_annotator_names_the_file():
    parsed = ann.parse_csv("dir/r.csv", "item_id,label,annotator\nr0,tech,\nr1,,\nr2,sport,bob\n")
    assert [(a.item_id, a.annotator) for a in parsed.annotations] == [("r0", "csv:r.csv"), ("r2", "bob")]
    assert parsed.blank_rows == 1


def test_annotation_folder_reads_json_and_csv_and_skips_notes(tmp_path):
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / ".gitkeep").write_text("")
    (tmp_path / "b.csv").write_text("item_id,label,annotator\nr0,sport,bob\n")
    (tmp_path / "a.json").write_text(json.dumps([ls_task()]))
    parsed = read_annotation_folder(tmp_path)
    assert [(a.file.rsplit("/", 1)[-1], a.label) for a in parsed.annotations] == [("a.json", "tech"), ("b.csv", "sport")]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("labels.xlsx", b"PK\x03\x04", r"labels.xlsx: unsupported annotation file"),
    ("bad.json", b"\xff\xfe\x00[", r"bad.json: not UTF-8 text"),
], ids=["unsupported_extension", "not_utf8"])
def test_annotation_folder_bad_file_is_a_one_line_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(StageError, match=message):
        read_annotation_folder(tmp_path)


def test_missing_annotation_folder_says_how_to_create_it(tmp_path):
    with pytest.raises(StageError, match="annotations folder not found .*create it"):
        read_annotation_folder(tmp_path / "annotations")


# ---------------------------------------------------------------- agreement


def test_cohen_kappa_known_value():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert ann.cohen_kappa(first, second) == pytest.approx(0.4)
    annotations = [ann.Annotation("f", "", f"i{k}", "A", lab) for k, lab in enumerate(first)]
    annotations += [ann.Annotation("f", "", f"i{k}", "B", lab) for k, lab in enumerate(second)]
    result = ann.agreement(annotations, ["yes", "no"])
    assert result["method"] == "cohen" and result["items"] == 50 and result["kappa"] == pytest.approx(0.4)


FLEISS = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
          [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def test_fleiss_kappa_known_value():
    # Fleiss (1971) as worked in the Wikipedia article: 10 items, 14 raters, 5 categories, kappa 0.210
    assert ann.fleiss_kappa(FLEISS) == pytest.approx(0.2099, abs=1e-4)
    labels = ["a", "b", "c", "d", "e"]
    annotations = []
    for item, row in enumerate(FLEISS):
        raters = iter(range(14))
        for cat, count in enumerate(row):
            annotations += [ann.Annotation("f", "", f"i{item}", f"u{next(raters)}", labels[cat]) for _ in range(count)]
    result = ann.agreement(annotations, labels)
    assert result["method"] == "fleiss" and result["annotators"] == 14
    assert result["kappa"] == pytest.approx(0.2099, abs=1e-4)


def test_agreement_needs_an_item_with_two_annotators():
    assert ann.agreement([ann.Annotation("f", "", "i0", "A", "x"), ann.Annotation("f", "", "i1", "B", "x")], ["x"]) is None


def test_vote_majority_and_tie():
    votes = ann.vote([ann.Annotation("f", "", "i", u, lab) for u, lab in [("a", "x"), ("b", "x"), ("c", "y")]] +
                     [ann.Annotation("f", "", "j", u, lab) for u, lab in [("a", "x"), ("b", "y")]])
    assert (votes["i"].label, votes["i"].confidence, votes["i"].tie) == ("x", pytest.approx(2 / 3), False)
    assert votes["j"].label is None and votes["j"].tie


# ---------------------------------------------------------------- features and evaluation slices


def test_feature_cache_reuses_rows_on_the_real_text_encoder(tmp_path):
    from stages.labeling.features import cached_extract
    from stages.modalities import get_modality

    text = get_modality("text")
    spec = {"backbone": "minilm_l6", "max_length": 16, "pooling": "mean"}
    cache = tmp_path / "f.npz"
    first = cached_extract(text, spec, ["a", "b"], ["the match ended 2-1", "shares rose"], batch_size=4, cache_path=cache)
    assert first.shape == (2, 384) and np.isfinite(first).all()
    # "a" comes from the cache: pass a different payload for it and the cached vector still returns
    second = cached_extract(text, spec, ["a", "c"], ["IGNORED", "profits fell"], batch_size=4, cache_path=cache)
    np.testing.assert_array_equal(second[0], first[0])
    with np.load(cache) as z:
        assert z["ids"].tolist() == ["a", "c"]
    other = cached_extract(text, {**spec, "max_length": 8}, ["a"], ["completely different"], batch_size=4,
                           cache_path=cache)
    assert not np.allclose(other[0], first[0])  # a different encoder spec invalidates the cache


def test_evaluate_slices_per_label_source():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    out = evaluate_slices(y, proba, ["source", "human", "model", "source"])
    assert out["source"] == {"n": 2, "accuracy": 1.0, "macro_f1": 1.0}
    assert out["model"]["accuracy"] == 0.0 and out["human"]["n"] == 1


# ---------------------------------------------------------------- review CSV: spreadsheet formula injection

FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+1+2", "-2+3", "@SUM(A1:A2)", "\tTAB=1",
            "\rCR=1", "'=already quoted", "plain text, kept as is", "a = b inside is fine"]


def test_review_csv_neutralises_formula_cells_and_reading_it_back_restores_them():
    import io

    import pandas as pd

    from stages.labeling import review

    queue = pd.DataFrame({"id": [f"-id{i}" if i == 2 else f"id{i}" for i in range(len(FORMULAS))], "text": FORMULAS,
                          "label": ["=cmd|' /C calc'!A0"] + ["ham"] * (len(FORMULAS) - 1),
                          "label_confidence": [1.0] * len(FORMULAS), "review_reason": ["unlabeled"] * len(FORMULAS)})
    text = review.review_csv(queue, payload_column="text")

    # what a spreadsheet sees: no cell starts a formula
    raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    cells = [v for column in raw.columns for v in raw[column]]
    assert not [v for v in cells if v[:1] in ("=", "+", "-", "@", "\t", "\r")]

    # reading back: the exact source text, ids and labels
    back = raw.map(ann.csv_unescape)
    assert list(back["text"]) == FORMULAS
    assert list(back["item_id"]) == list(queue["id"]) and back["current_label"][0] == queue["label"][0]

    raw["label"] = "ham"
    raw.loc[0, "label"] = "'-neg"  # a label that starts with a formula character, typed escaped as the file does
    parsed = ann.parse_csv("r.csv", raw.to_csv(index=False, lineterminator="\r\n"))  # as a spreadsheet saves it
    assert [a.item_id for a in parsed.annotations] == list(queue["id"])
    assert parsed.annotations[0].label == "-neg"
