"""Code tests for stages/clean.py: every drop reason, conservation, normalisation and exact dedup."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from stages.clean import clean
from stages.modalities import get_modality

TEXT = get_modality("text")
IMAGE = get_modality("image")
TEXT_NEAR = {"ngram": 5, "num_perm": 64, "bands": 16, "threshold": 0.7, "seed": 1}
TEXT_VALUES = {"min_chars": 3, "max_chars": 40, "fix_encoding": True, "strip_markup": True,
               "max_control_fraction": 0.05, "max_replacement_fraction": 0.01, "near_duplicates": TEXT_NEAR,
               "pii": {"action": "redact", "kinds": ["email", "phone", "ip", "card", "iban"], "phone_regions": ["GB"]}}
TEXT_PARAMS = TEXT.clean_params(TEXT_VALUES)
FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF"]


def image_values(**changes) -> dict:
    values = {"mode": "L", "size": 16, "min_side": 8, "max_side": 1000, "max_pixels": 10_000, "formats": FORMATS,
              "near_duplicates": {"max_distance": 8, "min_correlation": 0.97}}
    return {**values, **changes}


# 28x28 = 784 pixels fits under max_pixels; 40x40 = 1600 does not
IMAGE_PARAMS = IMAGE.clean_params(image_values(max_pixels=1599))


def text_frame(rows: list[tuple[str, object, str | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"id": i, "modality": "text", "text": t, "label": lab, "source": "test"} for i, t, lab in rows]
    )


def image_frame(rows: list[tuple[str, object, str | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"id": i, "modality": "image", "image": p, "label": lab, "source": "test"} for i, p, lab in rows]
    )


def assert_conserved(frame: pd.DataFrame, result) -> None:
    """Rows in = rows kept + rows quarantined, every quarantined row says why, metrics agree."""
    assert len(result.kept) + len(result.quarantine) == len(frame)
    reasons = result.quarantine["quarantine_reason"] if len(result.quarantine) else pd.Series([], dtype=object)
    assert all(isinstance(r, str) and r for r in reasons)
    assert not result.kept["id"].duplicated().any()
    metrics = result.metrics
    assert metrics["rows_in"] == len(frame)
    assert metrics["rows_kept"] == len(result.kept)
    assert metrics["rows_quarantined"] == len(result.quarantine)
    assert sum(metrics["quarantined_by_reason"].values()) == len(result.quarantine)
    # no column silently dropped
    assert set(frame.columns) <= set(result.kept.columns)
    assert set(frame.columns) <= set(result.quarantine.columns)


# ---------------------------------------------------------------- text

TEXT_DROPS = {
    "empty": [("bad", " \t\n\u200b ", "a")],
    "too_short": [("bad", "  ab  ", "a")],
    "too_long": [("bad", "x" * 41, "a")],
    "not_text": [("bad", None, "a")],
    "duplicate_id": [("dup", "first text is fine", "a"), ("dup", "second text is fine too", "b")],
    "exact_duplicate": [("b2", "Hello   world", "a"), ("b1", "Hello world", "a")],
}


@pytest.mark.parametrize("reason", sorted(TEXT_DROPS))
def test_text_drop_reason(reason):
    frame = text_frame([("keep", "a perfectly good text", "a"), *TEXT_DROPS[reason]])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="off")
    assert_conserved(frame, result)
    assert list(result.quarantine["quarantine_reason"]) == [reason]
    assert "keep" in set(result.kept["id"])
    assert result.metrics["quarantined_by_reason"] == {reason: 1}


@pytest.mark.parametrize("payload", [None, 123, b"bytes are not text", float("nan")])
def test_text_non_string_payload_is_not_text(payload):
    frame = text_frame([("keep", "a perfectly good text", "a"), ("bad", payload, "a")])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="off")
    assert_conserved(frame, result)
    assert result.quarantine.set_index("id").loc["bad", "quarantine_reason"] == "not_text"


@pytest.mark.parametrize(
    ("text", "kept"),
    [("abc", True), ("ab", False), ("x" * 40, True), ("x" * 41, False), ("  abc  ", True), ("a\u200b\u200bb", False)],
)
def test_text_length_bounds_apply_after_normalisation(text, kept):
    frame = text_frame([("r", text, "a")])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="off")
    assert_conserved(frame, result)
    assert (len(result.kept) == 1) is kept


def test_text_kept_payload_is_normalised_and_hashed():
    frame = text_frame([("r", "  \ufb01ne\u200b   Ｔｅｘｔ\x07\n\tok  ", "a")])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="off")
    assert list(result.kept["text"]) == ["fine Text ok"]
    assert list(result.kept["content_hash"]) == [TEXT.content_hash("fine Text ok")]


def test_duplicate_id_keeps_first_occurrence():
    frame = text_frame([("dup", "first text is fine", "a"), ("dup", "second text is fine", "a")])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="off")
    assert list(result.kept["text"]) == ["first text is fine"]
    assert list(result.quarantine["text"]) == ["second text is fine"]


def test_exact_duplicate_keeper_is_smallest_id_and_duplicate_of_points_to_it():
    # input order puts the largest id first; normalisation makes all three identical
    frame = text_frame([("c", "same  text here", "x"), ("a", "same text here", "y"), ("b", " same text\there ", "x"),
                        ("d", "other text", "x")])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="off")
    assert_conserved(frame, result)
    assert sorted(result.kept["id"]) == ["a", "d"]
    quarantine = result.quarantine.set_index("id")
    assert sorted(quarantine.index) == ["b", "c"]
    assert set(quarantine["quarantine_reason"]) == {"exact_duplicate"}
    assert list(quarantine.loc[["b", "c"], "duplicate_of"]) == ["a", "a"]
    assert result.metrics["exact_duplicate_clusters"] == 1
    assert result.metrics["exact_duplicate_clusters_with_conflicting_labels"] == 1


def test_non_duplicate_quarantine_rows_have_no_duplicate_of():
    frame = text_frame([("a", "same text", "x"), ("b", "same text", "x"), ("c", "", "x")])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="off")
    quarantine = result.quarantine.set_index("id")
    assert quarantine.loc["b", "duplicate_of"] == "a"
    assert pd.isna(quarantine.loc["c", "duplicate_of"])


def test_exact_dedup_off_keeps_duplicates():
    frame = text_frame([("a", "same text", "x"), ("b", "same text", "x")])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=False, near_dedup="off")
    assert_conserved(frame, result)
    assert sorted(result.kept["id"]) == ["a", "b"]
    assert result.metrics["exact_duplicate_clusters"] == 0


def test_all_rows_quarantined_still_conserves():
    frame = text_frame([("a", "", "x"), ("b", None, "x")])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="off")
    assert_conserved(frame, result)
    assert len(result.kept) == 0
    assert result.metrics["quarantined_by_reason"] == {"empty": 1, "not_text": 1}


def test_clean_keeps_extra_columns_and_does_not_mutate_input():
    frame = text_frame([("a", "  some   text ", "x"), ("b", "", "y")]).assign(license="MIT", source_ref=["r1", "r2"])
    before = frame.copy()
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="off")
    pd.testing.assert_frame_equal(frame, before)
    assert list(result.kept["license"]) == ["MIT"]
    assert list(result.quarantine["source_ref"]) == ["r2"]
    # a quarantined row keeps its original, un-normalised payload for inspection
    assert list(result.quarantine["text"]) == [""]


# ---------------------------------------------------------------- image


def _truncated_png(make_png) -> bytes:
    data = make_png((28, 28))
    return data[: len(data) // 2]


IMAGE_DROPS = {
    "empty_file": lambda make_png: [("bad", b"", "a")],
    "not_an_image": lambda make_png: [("bad", b"this is plain text, not an image", "a")],
    "corrupt_image": lambda make_png: [("bad", _truncated_png(make_png), "a")],
    "too_small": lambda make_png: [("bad", make_png((5, 40)), "a")],
    "too_many_pixels": lambda make_png: [("bad", make_png((40, 40)), "a")],
    "not_bytes": lambda make_png: [("bad", None, "a")],
    "duplicate_id": lambda make_png: [("keep", make_png((20, 20), value=10), "a")],
    # the same pixels encoded as BMP, and the keeper (smallest id) comes second
    "exact_duplicate": lambda make_png: [("zz", make_png((28, 28), value=77, fmt="BMP"), "a"),
                                         ("aa", make_png((28, 28), value=77), "a")],
}


@pytest.mark.parametrize("reason", sorted(IMAGE_DROPS))
def test_image_drop_reason(reason, make_png):
    frame = image_frame([("keep", make_png((28, 28), value=128), "a"), *IMAGE_DROPS[reason](make_png)])
    result = clean(frame, IMAGE, IMAGE_PARAMS, exact_dedup=True, near_dedup="off")
    assert_conserved(frame, result)
    assert list(result.quarantine["quarantine_reason"]) == [reason]
    assert "keep" in set(result.kept["id"])


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "PNG"])
def test_image_same_pixels_in_another_encoding_is_exact_duplicate(fmt, make_png):
    frame = image_frame([("b", make_png((30, 30), value=200, fmt=fmt), "x"), ("a", make_png((30, 30), value=200), "x")])
    result = clean(frame, IMAGE, IMAGE_PARAMS, exact_dedup=True, near_dedup="off")
    assert_conserved(frame, result)
    assert list(result.kept["id"]) == ["a"]
    assert list(result.quarantine["duplicate_of"]) == ["a"]
    assert list(result.quarantine["quarantine_reason"]) == ["exact_duplicate"]


def test_image_different_pixels_are_not_duplicates(make_png):
    frame = image_frame([("a", make_png((28, 28), value=10), "x"), ("b", make_png((28, 28), value=11), "x")])
    result = clean(frame, IMAGE, IMAGE_PARAMS, exact_dedup=True, near_dedup="off")
    assert len(result.kept) == 2


@pytest.mark.parametrize(("size", "kept"), [((8, 8), True), ((7, 30), False), ((30, 7), False), ((39, 41), True),
                                            ((40, 40), False), ((41, 39), True), ((50, 32), False)])
def test_image_size_bounds(size, kept, make_png):
    frame = image_frame([("r", make_png(size), "a")])
    result = clean(frame, IMAGE, IMAGE_PARAMS, exact_dedup=True, near_dedup="off")
    assert_conserved(frame, result)
    assert (len(result.kept) == 1) is kept


@pytest.mark.parametrize(("src_mode", "src_size"), [("RGB", (30, 20)), ("L", (16, 16)), ("L", (40, 10))])
@pytest.mark.parametrize(("mode", "size"), [("L", 16), ("RGB", 12)])
def test_image_normalised_to_configured_mode_and_size(src_mode, src_size, mode, size, make_png):
    from PIL import Image

    params = IMAGE.clean_params(image_values(mode=mode, size=size))
    frame = image_frame([("r", make_png(src_size, mode=src_mode, fmt="BMP"), "a")])
    result = clean(frame, IMAGE, params, exact_dedup=True, near_dedup="off")
    payload = result.kept.at[0, "image"]
    assert payload.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(payload)) as image:
        assert image.format == "PNG"
        assert image.mode == mode
        assert image.size == (size, size)
    assert result.kept.at[0, "content_hash"] == IMAGE.content_hash(payload)


def test_image_normalisation_keeps_pixel_values(make_png):
    from PIL import Image

    frame = image_frame([("r", make_png((16, 16), value=90), "a")])
    result = clean(frame, IMAGE, IMAGE_PARAMS, exact_dedup=True, near_dedup="off")
    with Image.open(io.BytesIO(result.kept.at[0, "image"])) as image:
        # away from the diagonal stripe the solid value survives unchanged (no resize at 16x16)
        assert image.getpixel((15, 0)) == 90
        assert image.getpixel((5, 5)) == 255 - 90


# ---------------------------------------------------------------- new text drop reasons and repairs

NEW_TEXT_DROPS = {
    "binary_content": [("bad", "PK\x03\x04\x00\x00binary\x00\x00 junk", "a")],
    "undecodable": [("bad", "caf\ufffd \ufffd\ufffd r\ufffdsum\ufffd", "a")],
    "near_duplicate": [("zz", "the minister said the plan would cut taxes for families", "a"),
                       ("aa", "The minister said the plan would cut taxes for all families!", "a")],
}


@pytest.mark.parametrize("reason", sorted(NEW_TEXT_DROPS))
def test_text_new_drop_reason(reason):
    params = TEXT.clean_params({**TEXT_VALUES, "max_chars": 200})
    frame = text_frame([("keep", "a perfectly good and unrelated text", "a"), *NEW_TEXT_DROPS[reason]])
    result = clean(frame, TEXT, params, exact_dedup=True, near_dedup="quarantine")
    assert_conserved(frame, result)
    assert list(result.quarantine["quarantine_reason"]) == [reason]
    assert result.metrics["quarantined_by_reason"] == {reason: 1}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("caf\u00c3\u00a9 cr\u00c3\u00a8me", "caf\u00e9 cr\u00e8me"),  # UTF-8 read as cp1252
     ("<p>Hello <b>world</b></p><script>var x = 1;</script>", "Hello world"),
     ("<!-- note --><div class='x'>Fish &amp; chips</div>", "Fish & chips"),
     ("a < b and c > d", "a < b and c > d")],  # comparison signs are text, not markup
    ids=["mojibake", "tags_and_script", "comment_and_entity", "not_markup"],
)
def test_text_repair_and_markup_stripping(raw, expected):
    params = TEXT.clean_params({**TEXT_VALUES, "max_chars": 200})
    assert TEXT.normalise(raw, params) == (expected, None)


def test_markup_only_text_is_empty():
    frame = text_frame([("a", "<div><br/></div>", "x")])
    result = clean(frame, TEXT, TEXT_PARAMS, exact_dedup=True, near_dedup="quarantine")
    assert list(result.quarantine["quarantine_reason"]) == ["empty"]


def near_dup_frame() -> pd.DataFrame:
    base = "the central bank raised interest rates again on thursday to fight inflation"
    return text_frame([
        ("c3", base.replace("thursday", "friday"), "econ"),           # one-word edit
        ("a1", base, "econ"),
        ("b2", base.upper() + "!!", "econ"),                           # case + punctuation variant
        ("d4", "a completely different sentence about football results", "sport"),
        ("e5", "a completely different sentence about football scores", "sport"),
    ])


def test_near_duplicate_cluster_keeps_smallest_id_and_points_to_it():
    params = TEXT.clean_params({**TEXT_VALUES, "max_chars": 200})
    frame = near_dup_frame()
    result = clean(frame, TEXT, params, exact_dedup=True, near_dedup="quarantine")
    assert_conserved(frame, result)
    quarantine = result.quarantine.set_index("id")
    assert sorted(result.kept["id"]) == ["a1", "d4"]
    assert dict(quarantine["near_duplicate_of"]) == {"b2": "a1", "c3": "a1", "e5": "d4"}
    assert set(quarantine["quarantine_reason"]) == {"near_duplicate"}
    assert result.metrics["near_duplicate_clusters"] == 2
    assert result.metrics["near_duplicate_cluster_size_max"] == 3
    assert result.metrics["near_duplicate_rows"] == 3
    assert list(result.kept["cluster_id"]) == list(result.kept["id"])


def test_near_dedup_mark_keeps_rows_with_cluster_ids():
    params = TEXT.clean_params({**TEXT_VALUES, "max_chars": 200})
    frame = near_dup_frame()
    result = clean(frame, TEXT, params, exact_dedup=True, near_dedup="mark")
    assert_conserved(frame, result)
    assert len(result.kept) == 5
    kept = result.kept.set_index("id")
    assert dict(kept["cluster_id"]) == {"a1": "a1", "b2": "a1", "c3": "a1", "d4": "d4", "e5": "d4"}
    assert kept["near_duplicate_of"].isna().tolist() == [i in ("a1", "d4") for i in kept.index]


def test_near_dedup_off_and_bad_mode():
    from stages.common import StageError

    params = TEXT.clean_params({**TEXT_VALUES, "max_chars": 200})
    assert len(clean(near_dup_frame(), TEXT, params, exact_dedup=True, near_dedup="off").kept) == 5
    with pytest.raises(StageError, match="clean.near_dedup"):
        clean(near_dup_frame(), TEXT, params, exact_dedup=True, near_dedup="maybe")


# ---------------------------------------------------------------- new image drop reasons


def _rotated_copy(make_png) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).ellipse([4, 6, 22, 20], fill=255)
    ImageDraw.Draw(image).rectangle([10, 2, 14, 26], fill=128)
    out = io.BytesIO()
    image.rotate(3, resample=Image.Resampling.BILINEAR).save(out, format="PNG")
    original = io.BytesIO()
    image.save(original, format="PNG")
    return original.getvalue(), out.getvalue()


NEW_IMAGE_DROPS = {
    "format_not_allowed": lambda make_png: [("bad", make_png((28, 28), fmt="WEBP"), "a")],
    "too_large": lambda make_png: [("bad", make_png((90, 10)), "a")],
    "near_duplicate": lambda make_png: [("zz", _rotated_copy(make_png)[1], "a"), ("aa", _rotated_copy(make_png)[0], "a")],
}


@pytest.mark.parametrize("reason", sorted(NEW_IMAGE_DROPS))
def test_image_new_drop_reason(reason, make_png):
    params = IMAGE.clean_params(image_values(max_side=80))
    frame = image_frame([("keep", make_png((28, 28), value=128), "a"), *NEW_IMAGE_DROPS[reason](make_png)])
    result = clean(frame, IMAGE, params, exact_dedup=True, near_dedup="quarantine")
    assert_conserved(frame, result)
    assert list(result.quarantine["quarantine_reason"]) == [reason]
    if reason == "near_duplicate":
        assert list(result.quarantine["near_duplicate_of"]) == ["aa"]
