"""The bad-input corpus: every kind is quarantined with a named reason, normalised, or refused in one line.

The corpus is generated here (no binary fixtures). Two tasks carry the bad items next to enough good
ones to split: `imgbad` (an image `folder` source) and `txtbad` (a CSV `table` source), plus `txtfiles`
(a text `folder` source). They run through the real `dvc repro` of acquire -> clean -> label -> split
once; each kind then looks up where its row ended. Refusals (archives, a non-UTF-8 table) run the
acquire CLI and expect exit 2 and one line naming the file and the member, line or field.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.pipeline_utils import copy_repo, dvc, edit_params, env
from tests.robustness_utils import create_input_dirs

pytestmark = pytest.mark.slow

TASKS = ("imgbad", "txtbad", "txtfiles")
STAGES = ("acquire", "clean", "label", "split")
SECRET = "TOP SECRET OUTSIDE THE SOURCE"


# ---------------------------------------------------------------- generators


def image_bytes(size=(32, 32), *, mode="L", fmt="PNG", seed=0, **save) -> bytes:
    """Seeded noise, so no two generated images are (near-)duplicates."""
    from PIL import Image

    rng = random.Random(seed)
    bands = {"L": 1, "P": 1, "RGB": 3, "CMYK": 4}[mode]
    data = bytes(rng.randrange(256) for _ in range(size[0] * size[1] * bands))
    image = Image.frombytes(mode, size, data)
    if mode == "P":
        image.putpalette([rng.randrange(256) for _ in range(768)])
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A grayscale PNG that declares `width` x `height`, with whatever IDAT data is given."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def decompression_bomb(side: int = 8000) -> bytes:
    """A few tens of KB that inflate to side*side pixels of zeros."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    parts = [compressor.compress(row * 500) for _ in range(side // 500)]
    return png_header_only(side, side, b"".join(parts) + compressor.flush())


def exif_rotated_jpeg() -> bytes:
    """40x20, left half black, right half white, tagged Orientation=6 (display rotated 90 degrees clockwise)."""
    from PIL import Image

    image = Image.new("L", (40, 20), 255)
    image.paste(0, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def words(rng: random.Random, vocab: list[str], n: int = 7) -> str:
    """Distinct words, so no two generated messages are near duplicates of each other."""
    return " ".join(rng.sample(vocab, min(n, len(vocab)))) + f" {rng.randrange(10**9)}"


# kind -> (task, source_ref, expected (stage, reason); reason None means kept, normalised)
IMAGE_CASES = {
    "zero_byte_image": ("a/zero_byte.png", b"", ("clean", "empty_file")),
    "truncated_png": ("a/truncated.png", None, ("clean", "corrupt_image")),
    "truncated_jpeg": ("a/truncated.jpg", None, ("clean", "corrupt_image")),
    "non_image_with_image_extension": ("a/not_an_image.png", b"this is plain text, not a PNG\n" * 20,
                                       ("clean", "not_an_image")),
    "decompression_bomb": ("a/bomb.png", None, ("clean", "too_many_pixels")),
    "huge_dimensions": ("a/huge.png", None, ("clean", "too_many_pixels")),
    "palette_mode": ("a/palette.png", None, ("split", None)),
    "cmyk_mode": ("a/cmyk.jpg", None, ("split", None)),
    "exif_rotated": ("a/exif_rotated.jpg", None, ("split", None)),
    "too_small": ("a/too_small.png", None, ("clean", "too_small")),
}


def build_image_source(root: Path) -> None:
    payloads = {
        "a/truncated.png": image_bytes((64, 64), seed=101)[:600],
        "a/truncated.jpg": image_bytes((64, 64), fmt="JPEG", seed=102)[:700],
        "a/bomb.png": decompression_bomb(),
        "a/huge.png": png_header_only(100_000, 100_000, zlib.compress(b"\x00" * 1000)),
        "a/palette.png": image_bytes((32, 32), mode="P", seed=103),
        "a/cmyk.jpg": image_bytes((32, 32), mode="CMYK", fmt="JPEG", seed=104),
        "a/exif_rotated.jpg": exif_rotated_jpeg(),
        "a/too_small.png": image_bytes((4, 4), seed=105),
    }
    for ref, (name, data, _) in ((r, c) for r, c in IMAGE_CASES.items()):
        payloads.setdefault(name, data)
    for cls in ("a", "b"):
        for i in range(6):
            payloads[f"{cls}/good_{i}.png"] = image_bytes((32, 32), mode="RGB", seed=ord(cls) * 100 + i)
    for ref, data in payloads.items():
        (root / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / ref).write_bytes(data)
    # a link out of the source folder, to a file and to a folder: never followed
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(image_bytes(seed=999))
    os.symlink(outside / "secret.png", root / "a" / "link_out.png")
    os.symlink(outside, root / "b" / "linkdir")


TEXT_ROWS = {
    # kind: (text, label, expected)
    "utf8_bom_in_field": ("\ufeffbom at the start of this message please keep", "ham", ("split", None)),
    "nul_bytes": ("nul\x00inside this ham message here", "ham", {("split", None), ("clean", "binary_content")}),
    "whitespace_only_row": ("   \t   ", "ham", ("clean", "empty")),
    "enormous_row": ("x" * 100_001, "spam", ("clean", "too_long")),
    "csv_embedded_newline_and_quotes": ('He said "hi",\nthen "left" the chat', "ham", ("split", None)),
    "label_outside_label_set": ("a message labelled with a class we never declared", "eggs",
                                ("label", "label_not_in_set")),
    "exact_duplicate": None,  # filled in below: the same text as good row 0
    "class_missing_from_a_split_1": ("quarterly newsletter: gardening tips and a recipe", "promo",
                                     ("split", "class_too_small_to_split")),
    "class_missing_from_a_split_2": ("Flash sale on umbrellas ends Sunday 6pm!", "promo",
                                     ("split", "class_too_small_to_split")),
}


def build_text_table(path: Path) -> dict[str, int]:
    """The CSV (UTF-8 with a BOM, so the header must still parse); returns kind -> 1-based data row."""
    rng = random.Random(7)
    ham = ("lunch meeting mum dinner bus class home tonight gym friday call later thanks sorry traffic keys "
           "garden kettle sister train coffee parcel laptop weekend movie shopping doctor football rain jacket "
           "bakery bridge candle guitar library museum picnic river tennis window").split()
    spam = ("WIN free prize cash claim URGENT txt STOP bonus entry reply winner voucher award ringtone "
            "lottery jackpot offer credit loan discount subscribe unlimited exclusive guaranteed selected "
            "congratulations mobile upgrade holiday cruise gift card rewards points tokens").split()
    rows = [(words(rng, ham), "ham") for _ in range(8)] + [(words(rng, spam), "spam") for _ in range(8)]
    cases = dict(TEXT_ROWS)
    cases["exact_duplicate"] = (rows[0][0], rows[0][1], ("clean", "exact_duplicate"))
    index = {}
    for kind, (text, label, _) in cases.items():
        index[kind] = len(rows) + 1
        rows.append((text, label))
    frame = pd.DataFrame(rows, columns=["text", "label"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False).encode("utf-8"))
    return index


def build_text_folder(root: Path) -> None:
    rng = random.Random(11)
    for cls in ("ham", "spam"):
        for i in range(4):
            (root / cls).mkdir(parents=True, exist_ok=True)
            vocab = f"{cls} alpha beta gamma delta omega kappa sigma theta lambda zeta iota rho tau phi chi psi".split()
            (root / cls / f"good_{i}.txt").write_text(words(rng, vocab))
    (root / "ham" / "cp1252.txt").write_bytes("caf\u00e9 \u201cquoted\u201d windows text".encode("cp1252"))
    (root / "ham" / "bom.txt").write_bytes(b"\xef\xbb\xbfa file that starts with a byte order mark")
    (root / "spam" / "latin1.txt").write_bytes(b"undecodable as cp1252 \x81\x8d bytes in here")


FILE_CASES = {
    "non_utf8_file_cp1252": ("ham/cp1252.txt", "cp1252"),
    "non_utf8_file_latin1_fallback": ("spam/latin1.txt", "latin-1"),
    "utf8_bom_file": ("ham/bom.txt", "utf-8-sig"),
}


# ---------------------------------------------------------------- the built corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("badinput") / "repo")
    # each task's files in its source folder, the dependency dvc.yaml gives its acquire stage
    build_image_source(repo / "data" / "imgbad" / "source")
    rows = build_text_table(repo / "data" / "txtbad" / "source" / "texts.csv")
    build_text_folder(repo / "data" / "txtfiles" / "source")

    def edit(p):
        p["run"] = list(TASKS)
        p["tasks"]["imgbad"] = {"modality": "image", "max_per_class": None, "labels": ["a", "b"], "label_map": {},
                                "source": {"kind": "folder", "license": "test"}}
        p["tasks"]["txtbad"] = {"modality": "text", "max_per_class": None, "labels": ["ham", "spam", "promo"],
                                "label_map": {}, "source": {"kind": "table", "file": "texts.csv",
                                                            "text_column": "text", "label_column": "label",
                                                            "license": "test"}}
        p["tasks"]["txtfiles"] = {"modality": "text", "max_per_class": None, "labels": ["ham", "spam"],
                                  "label_map": {}, "source": {"kind": "folder", "license": "test"}}
        for task in TASKS:  # keys other tasks declare (label rules, ...), present but empty here
            for key, value in p["tasks"]["spam"].items():
                p["tasks"][task].setdefault(key, type(value)() if isinstance(value, (list, dict)) else None)

    edit_params(repo, edit)
    create_input_dirs(repo, list(TASKS))
    result = dvc(["repro", *[f"split@{t}" for t in TASKS]], repo)
    return repo, rows, result


def outputs(repo: Path, task: str) -> dict[str, pd.DataFrame]:
    """Each data stage's kept table and quarantine, read from the paths dvc.lock records."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    tables = {}
    for stage in STAGES:
        for out in lock[f"{stage}@{task}"]["outs"]:
            path = out["path"]
            if path.endswith(".parquet") and "annotations" not in path:
                key = f"{stage}.quarantine" if "quarantine" in path else stage
                tables[key] = pd.read_parquet(repo / path)
    return tables


def metrics(repo: Path, task: str, stage: str) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][f"{stage}@{task}"]
    path = next(o["path"] for o in lock["outs"] if o["path"].startswith("metrics/"))
    return json.loads((repo / path).read_text())


def fate(tables: dict[str, pd.DataFrame], source_ref: str) -> tuple[str, str | None]:
    """Where a raw row ended: (stage, quarantine reason) or ("split", None) if it was kept to the end."""
    raw = tables["acquire"]
    ids = set(raw.loc[raw["source_ref"] == source_ref, "id"])
    assert len(ids) == 1, f"{source_ref}: {len(ids)} raw rows"
    for stage in ("clean", "label", "split"):
        quarantine = tables[f"{stage}.quarantine"]
        hit = quarantine[quarantine["id"].isin(ids)]
        if len(hit):
            return stage, str(hit["quarantine_reason"].iloc[0])
    assert tables["split"]["id"].isin(ids).sum() == 1
    return "split", None


def test_corpus_builds_without_a_traceback(corpus):
    _, _, result = corpus
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("task", TASKS)
def test_conservation_in_every_stage(corpus, task):
    repo, _, _ = corpus
    acquired = metrics(repo, task, "acquire")["rows"]
    upstream = acquired
    for stage in ("clean", "label", "split"):
        m = metrics(repo, task, stage)
        assert m["rows_in"] == upstream, (task, stage)
        assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"], (task, stage, m)
        assert sum(m["quarantined_by_reason"].values()) == m["rows_quarantined"]
        upstream = m["rows_kept"]


@pytest.mark.parametrize("kind", sorted(IMAGE_CASES))
def test_image_kind(corpus, kind):
    repo, _, _ = corpus
    ref, _, expected = IMAGE_CASES[kind]
    tables = outputs(repo, "imgbad")
    assert fate(tables, ref) == expected


def test_palette_cmyk_and_exif_images_are_normalised_to_the_configured_mode(corpus):
    from PIL import Image

    repo, _, _ = corpus
    clean_params = yaml.safe_load((repo / "params.yaml").read_text())["clean"]["by_modality"]["image"]
    kept = outputs(repo, "imgbad")["clean"]
    for ref in ("a/palette.png", "a/cmyk.jpg", "a/exif_rotated.jpg"):
        payload = kept.loc[kept["source_ref"] == ref, "image"].iloc[0]
        with Image.open(io.BytesIO(payload)) as image:
            assert image.mode == clean_params["mode"], ref


def test_exif_orientation_is_applied_before_resizing(corpus):
    """Left-black/right-white, tagged rotate-90-clockwise: after cleaning the top is black, the bottom white."""
    import numpy as np
    from PIL import Image

    repo, _, _ = corpus
    kept = outputs(repo, "imgbad")["clean"]
    payload = kept.loc[kept["source_ref"] == "a/exif_rotated.jpg", "image"].iloc[0]
    with Image.open(io.BytesIO(payload)) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    half = pixels.shape[0] // 2
    assert pixels[:half].mean() < 60 and pixels[half:].mean() > 190
    assert abs(pixels[:, :half].mean() - pixels[:, half:].mean()) < 40


def test_symlinks_out_of_a_folder_source_are_not_followed(corpus):
    repo, _, _ = corpus
    raw = outputs(repo, "imgbad")["acquire"]
    assert not any("link" in ref for ref in raw["source_ref"]), list(raw["source_ref"])
    assert not any(ref.startswith("b/linkdir") for ref in raw["source_ref"])
    # ...and not lost without a trace: acquire counts what it skipped, per reason
    assert metrics(repo, "imgbad", "acquire")["files_skipped_by_reason"] == {"symlink": 2}


@pytest.mark.parametrize("kind", sorted(TEXT_ROWS))
def test_text_and_label_kind(corpus, kind):
    repo, rows, _ = corpus
    tables = outputs(repo, "txtbad")
    if kind == "exact_duplicate":  # the copy of good row 1: one of the pair (the larger id) is quarantined
        fates = sorted([fate(tables, f"texts.csv:{rows[kind]}"), fate(tables, "texts.csv:1")], key=str)
        assert fates == [("clean", "exact_duplicate"), ("split", None)]
        return
    _, _, expected = TEXT_ROWS[kind]
    outcome = fate(tables, f"texts.csv:{rows[kind]}")
    assert outcome in expected if isinstance(expected, set) else outcome == expected
    if outcome[1] is None:
        kept = tables["split"]
        clean_text = kept.loc[kept["source_ref"] == f"texts.csv:{rows[kind]}", "text"].iloc[0]
        assert "\x00" not in clean_text and "\ufeff" not in clean_text and "\n" not in clean_text
        if kind == "csv_embedded_newline_and_quotes":
            assert clean_text == 'He said "hi", then "left" the chat'


def test_a_csv_with_a_bom_still_finds_its_header(corpus):
    repo, rows, _ = corpus
    raw = outputs(repo, "txtbad")["acquire"]
    assert len(raw) == max(rows.values())  # every data row read: "text" was found despite the BOM


@pytest.mark.parametrize("kind", sorted(FILE_CASES))
def test_text_file_encoding_is_decoded_and_recorded(corpus, kind):
    repo, _, _ = corpus
    ref, encoding = FILE_CASES[kind]
    tables = outputs(repo, "txtfiles")
    raw = tables["acquire"]
    assert raw.loc[raw["source_ref"] == ref, "source_encoding"].iloc[0] == encoding
    assert fate(tables, ref) == ("split", None)


def test_duplicate_id_is_quarantined_by_clean(corpus, tmp_path):
    repo, _, _ = corpus
    raw = outputs(repo, "txtbad")["acquire"]
    doubled = pd.concat([raw, raw.iloc[[3]].assign(text="a different payload under a reused id")], ignore_index=True)
    doubled.to_parquet(tmp_path / "raw.parquet", index=False)
    result = subprocess.run([sys.executable, "-m", "stages.clean", "txtbad", "--in", str(tmp_path / "raw.parquet"),
                             "--out", str(tmp_path / "clean.parquet"), "--quarantine", str(tmp_path / "q.parquet"),
                             "--metrics", str(tmp_path / "m.json")], cwd=repo, env=env(), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    quarantine = pd.read_parquet(tmp_path / "q.parquet")
    reasons = quarantine.loc[quarantine["id"] == raw["id"].iloc[3], "quarantine_reason"].tolist()
    assert reasons == ["duplicate_id"]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["rows_in"] == len(doubled) == m["rows_kept"] + m["rows_quarantined"]


# ---------------------------------------------------------------- refusals: one line, file and member/line named


def tar_with(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_577_836_800
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_with(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


GOOD = {"ham/1.txt": b"a perfectly fine message", "spam/1.txt": b"WIN a free prize now"}
REFUSALS = {
    # kind: (file name, bytes, source spec extras, needle in the error)
    "tar_member_with_dotdot": ("evil.tar.gz", lambda: tar_with({**GOOD, "ham/../../evil.txt": b"x"}),
                               "'ham/../../evil.txt': '..' in path"),
    "tar_member_with_absolute_path": ("abs.tar.gz", lambda: tar_with({**GOOD, "/tmp/evil-abs.txt": b"x"}),
                                      "'/tmp/evil-abs.txt': absolute path"),
    "zip_member_with_dotdot": ("evil.zip", lambda: zip_with({**GOOD, "../evil.txt": b"x"}),
                               "'../evil.txt': '..' in path"),
    "zip_member_with_absolute_path": ("abs.zip", lambda: zip_with({**GOOD, "/evil-abs.txt": b"x"}),
                                      "'/evil-abs.txt': absolute path"),
    "zip_bomb": ("bomb.zip", lambda: zip_with({**GOOD, "spam/bomb.txt": b"\0" * (16 << 20)}),
                 "'spam/bomb.txt': uncompressed size exceeds"),
    "tar_bomb": ("bomb.tar.gz", lambda: tar_with({**GOOD, "spam/bomb.txt": b"\0" * (16 << 20)}),
                 "'spam/bomb.txt': uncompressed size exceeds"),
}


def acquire_cli(repo: Path, task: str, tmp_path: Path, source: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.acquire", task, "--source", str(source),
                           "--out", str(tmp_path / "raw.parquet"), "--metrics", str(tmp_path / "acquire.json")],
                          cwd=repo, env=env(), capture_output=True, text=True)


def assert_one_line_refusal(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_unsafe_archive_is_refused_in_one_line(corpus, tmp_path, kind):
    repo, _, _ = corpus
    name, make, needle = REFUSALS[kind]
    archive = tmp_path / "in" / name
    archive.parent.mkdir()
    archive.write_bytes(make())
    task = f"arch_{kind}"
    edit_params(repo, lambda p: p["tasks"].update({task: {
        "modality": "text", "max_per_class": None, "labels": ["ham", "spam"], "label_map": {},
        "source": {"kind": "archive", "file": name, "license": "test", "max_uncompressed_bytes": 1 << 20}}}))
    result = acquire_cli(repo, task, tmp_path, archive.parent)
    assert_one_line_refusal(result, str(archive), needle)
    assert not (tmp_path / "raw.parquet").exists()
    # where an escaping member would land: next to the temp extraction folder, or at the absolute path
    landing = [Path(tempfile.gettempdir()) / "evil.txt", repo / "evil.txt", Path("/tmp/evil-abs.txt"),
               Path("/evil-abs.txt"), *tmp_path.rglob("evil*.txt")]
    assert not [p for p in landing if p.exists()]


def test_non_utf8_table_is_refused_naming_the_line(corpus, tmp_path):
    repo, _, _ = corpus
    table = tmp_path / "latin.csv"
    table.write_bytes(b"text,label\nfine row,ham\ncaf\xe9 au lait,ham\n")
    edit_params(repo, lambda p: p["tasks"].update({"latin": {
        "modality": "text", "max_per_class": None, "labels": ["ham"], "label_map": {},
        "source": {"kind": "table", "file": table.name, "text_column": "text", "label_column": "label",
                   "license": "test"}}}))
    assert_one_line_refusal(acquire_cli(repo, "latin", tmp_path, table.parent), str(table), "line 3", "0xe9", "UTF-8")
