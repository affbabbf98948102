"""Code tests for stages/acquire.py: folder and table sources, the numpy-only unpickler, the acquire core."""

from __future__ import annotations

import collections
import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.acquire import SOURCES, Item, acquire, load_numpy_pickle, read_table
from stages.common import StageError
from stages.modalities import get_modality

TEXT = get_modality("text")
IMAGE = get_modality("image")
FIXED_MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def collect_folder(root: Path, modality=TEXT):
    collected = SOURCES["folder"]({"kind": "folder", "license": "CC0"}, modality, root)
    assert collected.source_name == f"folder:{root}"
    assert collected.license == "CC0"
    return collected


def read_folder(root: Path, modality=TEXT) -> list[Item]:
    return collect_folder(root, modality).items


def read_table_source(path: Path, *, text_column: str = "text", label_column: str = "label") -> list[Item]:
    spec = {"kind": "table", "file": path.name, "text_column": text_column, "label_column": label_column,
            "license": "CC-BY-4.0"}
    collected = SOURCES["table"](spec, TEXT, path.parent)
    assert collected.source_name == f"table:{path}"
    assert collected.license == "CC-BY-4.0"
    assert collected.skipped == {}
    return collected.items


# ---------------------------------------------------------------- folder source


def test_folder_reads_one_subfolder_per_class(tmp_path):
    root = tmp_path / "src"
    write(root / "pos" / "a.txt", "good film")
    write(root / "pos" / "nested" / "b.txt", "great plot")
    write(root / "neg" / "c.txt", "dull")
    write(root / "unlabeled" / "d.txt", "who knows")
    write(root / "pos" / ".hidden.txt", "editor swap file")
    write(root / "stray.txt", "a file outside any class folder")
    items = read_folder(root)
    by_ref = {item.source_ref: item for item in items}
    assert sorted(by_ref) == ["neg/c.txt", "pos/a.txt", "pos/nested/b.txt", "unlabeled/d.txt"]
    assert by_ref["pos/a.txt"].label == "pos"
    assert by_ref["pos/nested/b.txt"].label == "pos"
    assert by_ref["neg/c.txt"].label == "neg"
    assert by_ref["unlabeled/d.txt"].label is None
    assert by_ref["pos/a.txt"].payload == "good film"
    assert by_ref["pos/a.txt"].encoding == "utf-8-sig"


def test_folder_records_cp1252_fallback_encoding(tmp_path):
    root = tmp_path / "src"
    write(root / "x" / "win.txt", "caf\u00e9 \u201cquoted\u201d".encode("cp1252"))
    write(root / "x" / "bom.txt", "\ufeffhello".encode("utf-8"))
    items = {item.source_ref: item for item in read_folder(root)}
    assert items["x/win.txt"].payload == "caf\u00e9 \u201cquoted\u201d"
    assert items["x/win.txt"].encoding == "cp1252"
    assert items["x/bom.txt"].payload == "hello"
    assert items["x/bom.txt"].encoding == "utf-8-sig"
    frame = acquire(list(items.values()), modality=TEXT, source_name="s", license="l", max_per_class=None, seed=0)
    assert dict(zip(frame["source_ref"], frame["source_encoding"])) == {"x/win.txt": "cp1252", "x/bom.txt": "utf-8-sig"}


def test_folder_counts_every_file_it_skips_per_reason(tmp_path):
    """Nothing in a source vanishes unaccounted: links, hidden files and stray files are counted, not just skipped."""
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "SECRET FILE")
    write(outside / "deep" / "a.txt", "in a linked folder")
    write(outside / "deep" / "b.txt", "in a linked folder")
    root = tmp_path / "src"
    write(root / "pos" / "a.txt", "good film")
    write(root / "pos" / ".swap.txt", "editor swap file")
    write(root / "pos" / ".cache" / "x.txt", "in a hidden folder")
    write(root / "pos" / ".cache" / "y.txt", "in a hidden folder")
    write(root / ".DS_Store", "finder clutter")
    write(root / "notes.txt", "a file outside any class folder")
    os.symlink(outside / "secret.txt", root / "pos" / "link.txt")
    os.symlink(outside / "deep", root / "pos" / "linkdir", target_is_directory=True)
    os.symlink(outside, root / "evilclass", target_is_directory=True)
    collected = collect_folder(root)
    assert [item.source_ref for item in collected.items] == ["pos/a.txt"]
    # a skipped folder counts once: nothing in it is looked at
    assert collected.skipped == {"hidden": 3, "not_in_a_class_folder": 1, "symlink": 3}


def test_acquire_metrics_count_skipped_files(tmp_path):
    """The stage writes the counts to acquire.json, where `dvc metrics diff` shows them."""
    import json
    import subprocess
    import sys

    from tests.pipeline_utils import copy_repo, edit_params, env

    repo = copy_repo(tmp_path / "repo")
    source = repo / "data" / "mine" / "source"
    write(source / "pos" / "a.txt", "good film")
    write(source / "neg" / "b.txt", "dull")
    write(source / "neg" / ".hidden.txt", "skipped")
    os.symlink(source / "pos" / "a.txt", source / "neg" / "link.txt")
    edit_params(repo, lambda p: p["tasks"].update(mine={
        "modality": "text", "max_per_class": None, "labels": ["neg", "pos"], "label_map": {},
        "source": {"kind": "folder", "license": "test"}}))
    result = subprocess.run([sys.executable, "-m", "stages.acquire", "mine", "--source", "data/mine/source",
                             "--out", "raw.parquet", "--metrics", "acquire.json"], cwd=repo, env=env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((repo / "acquire.json").read_text())
    assert metrics["rows"] == 2
    assert metrics["files_skipped_by_reason"] == {"hidden": 1, "symlink": 1} and metrics["files_skipped"] == 2


def test_folder_does_not_follow_symlinks_out_of_the_folder(tmp_path):
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "SECRET FILE")
    write(outside / "deep" / "secret2.txt", "SECRET DIR")
    root = tmp_path / "src"
    write(root / "cls" / "ok.txt", "fine")
    os.symlink(outside / "secret.txt", root / "cls" / "link.txt")
    os.symlink(outside / "deep", root / "cls" / "linkdir", target_is_directory=True)
    os.symlink(outside, root / "evilclass", target_is_directory=True)
    items = read_folder(root)
    assert [item.source_ref for item in items] == ["cls/ok.txt"]
    assert not any("SECRET" in item.payload for item in items)


def test_folder_image_payload_is_raw_bytes(tmp_path, make_png):
    root = tmp_path / "src"
    png = make_png((12, 12))
    write(root / "cat" / "1.png", png)
    items = read_folder(root, IMAGE)
    assert len(items) == 1
    assert items[0].payload == png
    assert items[0].encoding is None
    assert items[0].label == "cat"


def test_folder_missing_raises(tmp_path):
    with pytest.raises(StageError, match="not found"):
        read_folder(tmp_path / "nope")


def test_folder_bad_spec_names_the_key(tmp_path):
    with pytest.raises(StageError, match="license"):
        SOURCES["folder"]({"kind": "folder"}, TEXT, tmp_path)


# ---------------------------------------------------------------- table source

TRICKY_TEXT = 'He said "hi",\nthen left'


def test_table_csv_with_embedded_newline_and_quotes(tmp_path):
    path = write(tmp_path / "t.csv", 'text,label\n"He said ""hi"",\nthen left",pos\nplain,neg\nno label,\n,neg\n')
    items = read_table_source(path)
    assert [i.payload for i in items] == [TRICKY_TEXT, "plain", "no label", ""]
    assert [i.label for i in items] == ["pos", "neg", None, "neg"]
    assert [i.source_ref for i in items] == ["t.csv:1", "t.csv:2", "t.csv:3", "t.csv:4"]


def test_table_csv_with_bom_and_padded_label(tmp_path):
    path = write(tmp_path / "t.csv", "\ufefftext,label\nsomething, pos \n".encode("utf-8"))
    items = read_table_source(path)
    assert [(i.payload, i.label) for i in items] == [("something", "pos")]


def test_table_jsonl(tmp_path):
    path = write(tmp_path / "t.jsonl",
                 '{"text": "He said \\"hi\\",\\nthen left", "label": "pos"}\n'
                 '{"text": null, "label": "neg"}\n'
                 '{"text": "no label", "label": null}\n')
    items = read_table_source(path)
    assert [i.payload for i in items] == [TRICKY_TEXT, None, "no label"]
    assert [i.label for i in items] == ["pos", "neg", None]


def test_table_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"body": [TRICKY_TEXT, "b"], "y": ["pos", None]}).to_parquet(path)
    items = read_table_source(path, text_column="body", label_column="y")
    assert [(i.payload, i.label) for i in items] == [(TRICKY_TEXT, "pos"), ("b", None)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
@pytest.mark.parametrize("missing", ["text", "label"])
def test_table_missing_column_names_file_and_column(tmp_path, suffix, missing):
    frame = pd.DataFrame({"text": ["a"], "label": ["x"]}).drop(columns=[missing])
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    with pytest.raises(StageError) as excinfo:
        read_table_source(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert repr(missing) in message


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("t.txt", "text,label\n", "unsupported table format"),
        ("t.jsonl", "{not json\n", "cannot parse"),
        ("t.parquet", "not a parquet file", "cannot parse"),
    ],
)
def test_read_table_errors_are_stage_errors(tmp_path, name, content, match):
    path = write(tmp_path / name, content)
    with pytest.raises(StageError, match=match) as excinfo:
        read_table(path)
    assert str(path) in str(excinfo.value)


def test_read_table_missing_file(tmp_path):
    with pytest.raises(StageError, match="not found"):
        read_table(tmp_path / "absent.csv")


def test_table_jsonl_integer_labels_with_a_gap_stay_integers(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n'
                                       '{"text": "c", "label": null}\n')
    assert [i.label for i in read_table_source(path)] == ["1", "0", None]


# ---------------------------------------------------------------- numpy-only unpickler


def gz_pickle(path: Path, obj: object, protocol: int = 4) -> Path:
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=protocol)))
    return path


@pytest.mark.parametrize("dtype", ["uint8", "int64", "float32"])
def test_load_numpy_pickle_loads_an_array(tmp_path, dtype):
    array = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    loaded = load_numpy_pickle(gz_pickle(tmp_path / "a.gz", array))
    assert isinstance(loaded, np.ndarray)
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)


class _Exploit:
    """Unpickling this would create `marker` through builtins.open."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize(
    "make_obj",
    [
        lambda marker: collections.OrderedDict(a=1),
        lambda marker: collections.OrderedDict,
        lambda marker: _Exploit,
        lambda marker: _Exploit(marker),
        lambda marker: [np.zeros(2), _Exploit(marker)],
    ],
    ids=["ordered_dict", "a_class", "local_class", "reduce_exploit", "exploit_inside_list"],
)
def test_load_numpy_pickle_refuses_other_objects_without_running_them(tmp_path, make_obj):
    marker = tmp_path / "pwned"
    path = gz_pickle(tmp_path / "evil.gz", make_obj(marker))
    with pytest.raises(StageError, match="not a numpy array pickle") as excinfo:
        load_numpy_pickle(path)
    assert str(path) in str(excinfo.value)
    assert not marker.exists()


def test_load_numpy_pickle_refuses_a_non_gzip_file(tmp_path):
    path = write(tmp_path / "plain.gz", pickle.dumps(np.zeros(3)))
    with pytest.raises(StageError, match="not a numpy array pickle"):
        load_numpy_pickle(path)


def test_load_numpy_pickle_refuses_a_plain_list(tmp_path):
    with pytest.raises(StageError):
        load_numpy_pickle(gz_pickle(tmp_path / "list.gz", [1, 2, 3]))


def test_load_numpy_pickle_loads_a_protocol_5_array(tmp_path):
    array = np.arange(6, dtype="uint8")
    np.testing.assert_array_equal(load_numpy_pickle(gz_pickle(tmp_path / "a.gz", array, protocol=5)), array)


# ---------------------------------------------------------------- acquire core


def items_of(labels: list[str | None], *, prefix: str = "t") -> list[Item]:
    return [Item(f"{prefix} text {i}", lab, f"ref{i}", FIXED_MTIME) for i, lab in enumerate(labels)]


def test_acquire_builds_rows_with_provenance():
    items = [Item("caf\u00e9", "a", "f.txt", FIXED_MTIME, "cp1252"), Item(None, None, "g.txt", FIXED_MTIME)]
    frame = acquire(items, modality=TEXT, source_name="src", license="MIT", max_per_class=None, seed=0)
    assert {"id", "modality", "text", "label", "source", "source_ref", "source_encoding", "license", "sha256",
            "acquired_at"} <= set(frame.columns)
    rows = frame.set_index("source_ref")
    assert rows.loc["f.txt", "sha256"] == hashlib.sha256("caf\u00e9".encode()).hexdigest()
    assert rows.loc["g.txt", "sha256"] == hashlib.sha256(b"").hexdigest()
    assert rows.loc["f.txt", "acquired_at"] == "2020-01-01T00:00:00+00:00"
    assert rows.loc["f.txt", "source_encoding"] == "cp1252"
    assert set(frame["modality"]) == {"text"}
    assert set(frame["license"]) == {"MIT"}
    assert set(frame["source"]) == {"src"}
    assert list(frame["id"]) == sorted(frame["id"])
    assert frame["id"].str.fullmatch(r"[0-9a-f]{32}").all()


def test_acquire_image_rows_use_the_image_column(make_png):
    png = make_png()
    frame = acquire([Item(png, "cat", "1.png", FIXED_MTIME)], modality=IMAGE, source_name="s", license="l",
                    max_per_class=None, seed=0)
    assert frame.at[0, "image"] == png
    assert frame.at[0, "sha256"] == hashlib.sha256(png).hexdigest()
    assert frame.at[0, "modality"] == "image"


def test_acquire_id_is_stable_and_depends_on_content_and_ref():
    def ids(items):
        frame = acquire(items, modality=TEXT, source_name="s", license="l", max_per_class=None, seed=0)
        return dict(zip(frame["source_ref"], frame["id"]))

    base = ids([Item("x", "a", "r1", 1.0), Item("y", "a", "r2", 2.0)])
    assert ids([Item("y", "a", "r2", 9.0), Item("x", "b", "r1", 9.0)]) == base  # order, mtime, label don't matter
    assert ids([Item("x!", "a", "r1", 1.0)])["r1"] != base["r1"]
    assert ids([Item("x", "a", "r9", 1.0)])["r9"] != base["r1"]
    other_source = acquire([Item("x", "a", "r1", 1.0)], modality=TEXT, source_name="t", license="l",
                           max_per_class=None, seed=0)
    assert other_source.at[0, "id"] != base["r1"]


def test_acquire_with_no_items_raises():
    with pytest.raises(StageError, match="no items"):
        acquire([], modality=TEXT, source_name="empty", license="l", max_per_class=None, seed=0)


@pytest.mark.parametrize("cap", [1, 3, 10])
def test_acquire_max_per_class_caps_each_class(cap):
    labels = ["a"] * 8 + ["b"] * 2 + [None] * 5
    items = items_of(labels)
    frame = acquire(items, modality=TEXT, source_name="s", license="l", max_per_class=cap, seed=7)
    counts = frame["label"].value_counts(dropna=False).to_dict()
    assert counts.get("a") == min(cap, 8)
    assert counts.get("b") == min(cap, 2)
    assert int(frame["label"].isna().sum()) == min(cap, 5)  # unlabeled rows are capped as their own group
    full = acquire(items, modality=TEXT, source_name="s", license="l", max_per_class=None, seed=7)
    assert set(frame["id"]) <= set(full["id"])
    assert list(frame["id"]) == sorted(frame["id"])


def test_acquire_max_per_class_is_deterministic_per_seed():
    items = items_of(["a"] * 30 + ["b"] * 30)

    def picked(seed):
        return list(acquire(items, modality=TEXT, source_name="s", license="l", max_per_class=5, seed=seed)["id"])

    assert picked(3) == picked(3)
    assert picked(3) != picked(4)


def test_acquire_without_cap_keeps_every_item():
    items = items_of(["a"] * 4 + ["b"])
    frame = acquire(items, modality=TEXT, source_name="s", license="l", max_per_class=None, seed=0)
    assert len(frame) == len(items)
    assert sorted(frame["text"]) == sorted(item.payload for item in items)


# ---------------------------------------------------------------- archive source


def _tar_gz(members: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), FIXED_MTIME
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, FIXED_MTIME
            tar.addfile(info)
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def collect_archive(path: Path, *, cap: int = 1 << 20, modality=TEXT):
    spec = {"kind": "archive", "file": path.name, "license": "CC0", "max_uncompressed_bytes": cap}
    collected = SOURCES["archive"](spec, modality, path.parent)
    assert collected.source_name == f"archive:{path}" and collected.license == "CC0"
    return collected


def read_archive_source(path: Path, *, cap: int = 1 << 20, modality=TEXT) -> list[Item]:
    return collect_archive(path, cap=cap, modality=modality).items


ARCHIVE_MEMBERS = {"pos/a.txt": b"good film", "neg/b.txt": b"dull", "unlabeled/c.txt": b"who knows"}


@pytest.mark.parametrize("name,make", [("src.tar.gz", _tar_gz), ("src.zip", _zip)])
def test_archive_reads_like_a_folder_with_member_mtimes(tmp_path, name, make):
    path = write(tmp_path / name, make(ARCHIVE_MEMBERS))
    items = {item.source_ref: item for item in read_archive_source(path)}
    assert sorted(items) == ["neg/b.txt", "pos/a.txt", "unlabeled/c.txt"]
    assert items["pos/a.txt"].label == "pos" and items["unlabeled/c.txt"].label is None
    assert items["neg/b.txt"].payload == "dull"
    # acquired_at comes from the member, not from the extraction: reruns give identical rows
    assert {item.modified for item in items.values()} == {FIXED_MTIME}


def test_archive_symlink_members_are_not_followed(tmp_path):
    path = write(tmp_path / "src.tar.gz", _tar_gz({**ARCHIVE_MEMBERS, "pos/.hidden.txt": b"x"},
                                                  links={"pos/link.txt": "/etc/hostname"}))
    collected = collect_archive(path)
    assert "pos/link.txt" not in {item.source_ref for item in collected.items}
    assert collected.skipped == {"hidden": 1, "symlink": 1}  # counted, not silently dropped


@pytest.mark.parametrize("name,why", [
    ("../x.txt", "'..' in path"), ("a/../../x.txt", "'..' in path"), ("/etc/x.txt", "absolute path"),
    ("C:/x.txt", "absolute path"), ("a\\..\\x.txt", "backslash in name"), ("", "empty or NUL in name"),
])
def test_unsafe_member_names(name, why):
    from stages.acquire import unsafe_member_name

    assert unsafe_member_name(name) == why


@pytest.mark.parametrize("name,make", [("evil.tar.gz", _tar_gz), ("evil.zip", _zip)])
def test_archive_with_traversal_member_is_refused_whole(tmp_path, name, make):
    path = write(tmp_path / "in" / name, make({**ARCHIVE_MEMBERS, "pos/../../escaped.txt": b"x"}))
    with pytest.raises(StageError, match=r"member 'pos/\.\./\.\./escaped\.txt': '\.\.' in path; refusing"):
        read_archive_source(path)
    assert not list(tmp_path.rglob("escaped.txt"))


@pytest.mark.parametrize("name,make", [("bomb.tar.gz", _tar_gz), ("bomb.zip", _zip)])
def test_archive_over_the_size_cap_is_refused(tmp_path, name, make):
    path = write(tmp_path / name, make({**ARCHIVE_MEMBERS, "pos/zeros.txt": b"\0" * 4096}))
    with pytest.raises(StageError, match=r"member 'pos/zeros.txt': uncompressed size exceeds .*\(1000\)"):
        read_archive_source(path, cap=1000)


def test_archive_unknown_format_and_garbage_are_one_line_errors(tmp_path):
    with pytest.raises(StageError, match="unsupported archive format"):
        read_archive_source(write(tmp_path / "src.rar", b"Rar!"))
    with pytest.raises(StageError, match="unreadable zip archive"):
        read_archive_source(write(tmp_path / "src.zip", b"not a zip at all"))
    with pytest.raises(StageError, match="unreadable tar archive"):
        read_archive_source(write(tmp_path / "src.tar.gz", b"not a tarball"))
    with pytest.raises(StageError, match="archive source not found"):
        read_archive_source(tmp_path / "missing.zip")


def test_archive_spec_without_a_cap_names_the_key(tmp_path):
    with pytest.raises(StageError, match="max_uncompressed_bytes"):
        SOURCES["archive"]({"kind": "archive", "file": "x.zip", "license": "CC0"}, TEXT, tmp_path)


def test_non_utf8_csv_names_the_line(tmp_path):
    path = write(tmp_path / "t.csv", b"text,label\nfine,pos\ncaf\xe9,neg\n")
    with pytest.raises(StageError, match=r"t.csv: line 3: byte 0xe9 is not valid UTF-8"):
        read_table(path)
