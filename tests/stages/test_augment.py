"""Code tests for stages/augment.py: val/test untouched, `copies` children per train row, seeded."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from PIL import Image

from stages.augment import augment, copies_for
from stages.common import StageError, content_id
from stages.modalities import get_modality
from tests.stages.test_text_augment import TEXT_AUGMENT

TEXT = get_modality("text")
IMAGE = get_modality("image")
# high probabilities so that two seeds almost surely differ on a ten-word sentence
TEXT_PARAMS = TEXT.augment_params({**TEXT_AUGMENT, "swap_prob": 0.5, "delete_prob": 0.2})
IMAGE_PARAMS = IMAGE.augment_params(
    {"degrees": 30, "translate": 0.2, "scale_min": 0.8, "scale_max": 1.2, "hflip_prob": 0.5}
)
SENTENCE = "the quick brown fox jumps over the lazy dog again"


def text_frame() -> pd.DataFrame:
    splits = ["train", "train", "train", "val", "val", "test", "test"]
    return pd.DataFrame(
        {
            "id": [content_id("row", str(i)) for i in range(len(splits))],
            "modality": "text",
            "text": [f"{SENTENCE} number {i}" for i in range(len(splits))],
            "label": ["a", "b", "a", "a", "b", "b", "a"],
            "label_confidence": 1.0,
            "content_hash": [TEXT.content_hash(f"{SENTENCE} number {i}") for i in range(len(splits))],
            "split": splits,
        }
    )


def image_frame(make_png) -> pd.DataFrame:
    splits = ["train", "train", "val", "test"]
    payloads = [make_png((16, 16), value=40 * i + 20) for i in range(len(splits))]
    return pd.DataFrame(
        {
            "id": [content_id("img", str(i)) for i in range(len(splits))],
            "modality": "image",
            "image": payloads,
            "label": ["x", "y", "x", "y"],
            "content_hash": [IMAGE.content_hash(p) for p in payloads],
            "split": splits,
        }
    )


def originals(out: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    return out.loc[~out["augmented"].astype(bool), list(frame.columns)].reset_index(drop=True)


@pytest.mark.parametrize("copies", [0, 1, 3])
def test_original_rows_pass_through_unchanged(copies):
    frame = text_frame()
    before = frame.copy()
    out = augment(frame, TEXT, TEXT_PARAMS, copies=copies, seed=5)
    pd.testing.assert_frame_equal(frame, before)  # input not mutated
    pd.testing.assert_frame_equal(originals(out, frame), frame, check_exact=True)
    kept = out[~out["augmented"].astype(bool)]
    assert kept["parent_id"].isna().all()


@pytest.mark.parametrize("copies", [1, 2])
def test_copies_rows_per_train_row_with_parent_id(copies):
    frame = text_frame()
    out = augment(frame, TEXT, TEXT_PARAMS, copies=copies, seed=5)
    train_ids = set(frame.loc[frame["split"] == "train", "id"])
    extra = out[out["augmented"].astype(bool)]
    assert len(out) == len(frame) + copies * len(train_ids)
    assert len(extra) == copies * len(train_ids)
    assert extra["parent_id"].value_counts().to_dict() == {pid: copies for pid in train_ids}
    assert (extra["split"] == "train").all()
    assert not out["id"].duplicated().any()
    assert not set(extra["id"]) & set(frame["id"])
    parents = frame.set_index("id")
    for _, row in extra.iterrows():
        assert row["label"] == parents.loc[row["parent_id"], "label"]
        assert row["content_hash"] == TEXT.content_hash(row["text"])
        assert row["text"]  # never empty


def test_val_and_test_rows_get_no_copies():
    frame = text_frame()
    out = augment(frame, TEXT, TEXT_PARAMS, copies=2, seed=5)
    held_out = set(frame.loc[frame["split"] != "train", "id"])
    assert not set(out["parent_id"].dropna()) & held_out
    assert (out["split"] != "train").sum() == len(held_out)


def test_deterministic_for_a_seed():
    frame = text_frame()
    first = augment(frame, TEXT, TEXT_PARAMS, copies=2, seed=11)
    again = augment(frame, TEXT, TEXT_PARAMS, copies=2, seed=11)
    pd.testing.assert_frame_equal(first, again)


def test_independent_of_input_row_order():
    frame = text_frame()
    first = augment(frame, TEXT, TEXT_PARAMS, copies=1, seed=11)
    reordered = augment(frame.iloc[::-1].reset_index(drop=True), TEXT, TEXT_PARAMS, copies=1, seed=11)
    key = ["id", "text", "parent_id"]
    pd.testing.assert_frame_equal(
        first[key].sort_values("id").reset_index(drop=True), reordered[key].sort_values("id").reset_index(drop=True)
    )


def test_another_seed_gives_other_payloads():
    frame = text_frame()
    first = augment(frame, TEXT, TEXT_PARAMS, copies=1, seed=1)
    other = augment(frame, TEXT, TEXT_PARAMS, copies=1, seed=2)
    a = first[first["augmented"].astype(bool)].set_index("id")["text"]
    b = other[other["augmented"].astype(bool)].set_index("id")["text"]
    # ids are derived from the parent and copy number, so they line up across seeds
    assert sorted(a.index) == sorted(b.index)
    assert (a.sort_index() != b.sort_index()).any()


def test_augmented_payloads_differ_from_their_parents():
    frame = text_frame()
    out = augment(frame, TEXT, TEXT_PARAMS, copies=1, seed=3)
    extra = out[out["augmented"].astype(bool)]
    parents = frame.set_index("id")["text"]
    assert any(row["text"] != parents[row["parent_id"]] for _, row in extra.iterrows())


def test_no_train_rows_means_no_copies():
    frame = text_frame().assign(split="val")
    out = augment(frame, TEXT, TEXT_PARAMS, copies=2, seed=0)
    assert len(out) == len(frame)
    assert not out["augmented"].any()
    # concatenating the empty copies widens str columns to object; the values are what matter here
    pd.testing.assert_frame_equal(originals(out, frame), frame, check_dtype=False)


def test_image_augment_keeps_held_out_bytes_and_is_seeded(make_png):
    frame = image_frame(make_png)
    out = augment(frame, IMAGE, IMAGE_PARAMS, copies=2, seed=4)
    kept = originals(out, frame)
    assert list(kept["image"]) == list(frame["image"])  # byte-identical payloads
    pd.testing.assert_frame_equal(kept, frame, check_exact=True)
    extra = out[out["augmented"].astype(bool)]
    assert len(extra) == 2 * 2
    for payload in extra["image"]:
        with Image.open(io.BytesIO(payload)) as image:
            assert image.format == "PNG"
            assert image.size == (16, 16)
            assert image.mode == "L"
    again = augment(frame, IMAGE, IMAGE_PARAMS, copies=2, seed=4)
    assert list(again["image"]) == list(out["image"])
    other = augment(frame, IMAGE, IMAGE_PARAMS, copies=2, seed=5)
    assert list(other["image"]) != list(out["image"])


def test_image_draws_applied_one_by_one_equal_the_composed_transform(make_png):
    """augment_draws + augment_one (what the ray engine maps) give the bytes torchvision's Compose gives when it
    draws and transforms image by image from one seeded stream (augment before the engine split it), sizes mixed."""
    import torch
    from torchvision.transforms import v2

    from stages.modalities.image import encode_png

    payloads = [make_png(size, mode=mode, value=17 * i % 256)
                for i, (size, mode) in enumerate([((16, 16), "L"), ((40, 24), "RGB"), ((24, 40), "L")] * 4)]
    compose = v2.Compose([v2.RandomAffine(degrees=IMAGE_PARAMS.degrees,
                                          translate=(IMAGE_PARAMS.translate, IMAGE_PARAMS.translate),
                                          scale=(IMAGE_PARAMS.scale_min, IMAGE_PARAMS.scale_max)),
                          v2.RandomHorizontalFlip(p=IMAGE_PARAMS.hflip_prob)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        expected = []
        for payload in payloads:
            with Image.open(io.BytesIO(payload)) as image:
                image.load()
                expected.append(encode_png(compose(image)))
    draws = IMAGE.augment_draws(payloads, IMAGE_PARAMS, seed=7)
    assert {d["hflip"] for d in draws} == {True, False}
    # row by row in reverse order: each copy depends on its own draw only
    reversed_rows = [IMAGE.augment_one(p, d, IMAGE_PARAMS) for p, d in zip(payloads[::-1], draws[::-1])]
    assert reversed_rows[::-1] == expected == IMAGE.augment(payloads, IMAGE_PARAMS, seed=7)


def test_a_modality_that_draws_as_it_transforms_has_no_draws():
    assert TEXT.augment_draws(["a b c"], TEXT_PARAMS, seed=1) is None


def test_copies_per_modality_and_bad_values_name_their_key():
    text, image = get_modality("text"), get_modality("image")
    assert copies_for(2, text) == 2 and copies_for(2, image) == 2
    assert copies_for({"image": 1, "text": 0}, text) == 0 and copies_for({"image": 1, "text": 0}, image) == 1
    with pytest.raises(StageError, match=r"augment.copies.text: missing key"):
        copies_for({"image": 1}, text)
    with pytest.raises(StageError, match=r"augment.copies.text: expected a whole number >= 0, got -1"):
        copies_for({"image": 1, "text": -1}, text)
    with pytest.raises(StageError, match=r"augment.copies: expected a whole number >= 0, got 'two'"):
        copies_for("two", image)
