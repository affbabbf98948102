"""The `ray` engine: the data stages' heavy steps as Ray Data pipelines over Arrow partitions.

- `map_values`: one `map_batches` task per partition; the partitions travel through the object store
  (`ray.put`) and the results back as Ray Data object columns: no hand-made serialisation;
- `group_positions`: a hash shuffle on the key (`groupby(...).map_groups`), only groups of 2+ come back;
- near duplicates, text: MinHash signatures and LSH band keys as a `map_batches`, one row per (document,
  band); a shuffle on (band, key) puts each bucket in one task, which verifies its candidate pairs by exact
  Jaccard right there (in parallel over buckets); only verified pairs (16 bytes each) return to the driver,
  where clean's union-find builds the clusters. The driver holds O(rows) ids and the verified pair list;
  the shuffle moves each document once per band;
- near duplicates, images: pHash and the 16x16 verification thumbnail as a `map_batches`; the 64-bit hashes
  and thumbnails (2 KiB per image) come back and the all-pairs Hamming scan runs on the driver, as locally;
- any other modality: its own `near_duplicate_pairs` on the collected payloads;
- `map_chunks` (label's encoder features): `map_batches` over an actor pool, one chunk per call, each actor
  building its model once; one GPU per actor where the cluster has GPUs, else one CPU.

Every function here returns exactly what `stages.engine.LocalEngine` returns (same signatures from
stages/dedup.py, same verification, same pair order), so the engine never changes an output.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from stages.common import StageError
from stages.dedup import band_keys, image_pairs, image_signatures, jaccard_pairs, minhash, pairs_in_buckets, shingles

# rows per Arrow partition: big enough to amortise a task (~1 ms each), small enough to spread 2+ CPUs
ROWS_PER_PARTITION = 20_000
CONNECT_TIMEOUT_S = 5.0


@contextmanager
def ray_engine(params: Any) -> Iterator[RayEngine]:
    """Join the cluster at `params.address` (null: start a local instance); stop only an instance started here."""
    import ray
    import ray.data

    started = False
    if not ray.is_initialized():
        _check_reachable(params.address)
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if params.address is None:
            options["num_cpus"] = params.num_cpus
        else:
            # a remote cluster's workers import the stages from this checkout, shipped with the job
            options["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parents[1])]}
        try:
            ray.init(address=params.address, **options)
        except Exception as exc:  # ray raises ConnectionError, RuntimeError or ValueError depending on the address
            raise StageError(f"params.yaml: base.engine.address: cannot join a Ray cluster at {params.address!r}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        started = True
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    # sort-based shuffle runs as plain tasks; the default hash shuffle starts aggregator actors per groupby
    # (measured here: 0.1 s vs 2.7 s for a small groupby), which dominates a stage on one machine
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    context.print_on_execution_start = False
    lost = (ray.exceptions.WorkerCrashedError, ray.exceptions.ActorDiedError, ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError, ray.exceptions.RaySystemError, ray.exceptions.OutOfMemoryError)
    try:
        yield RayEngine(cpus=max(1, int(ray.cluster_resources().get("CPU", 1))))
    except lost as exc:  # retries exhausted: the stage has written nothing yet (outputs are written after the core)
        raise StageError(f"ray: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'worker lost'} "
                         "(nothing written; rerun the stage)") from None
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str | None) -> None:
    """One line naming the address when nothing listens there (ray.init would retry for a minute)."""
    if address is None or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise StageError(f"params.yaml: base.engine.address: {address!r} is not host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise StageError(f"params.yaml: base.engine.address: no Ray cluster reachable at {address!r} "
                         f"({exc.strerror or type(exc).__name__})") from None


class RayEngine:
    """The engine primitives (see stages/engine/__init__.py) on Ray Data."""

    distributed = True

    def __init__(self, *, cpus: int) -> None:
        self.cpus = cpus

    def partitions(self, rows: int) -> int:
        return max(1, min(rows, max(2 * self.cpus, -(-rows // ROWS_PER_PARTITION))))

    def dataset(self, columns: dict[str, Any]) -> Any:
        """An Arrow table cut into `partitions` blocks, as a Ray Dataset."""
        import pyarrow as pa
        import ray.data

        table = pa.table(columns)
        step = -(-table.num_rows // self.partitions(table.num_rows)) if table.num_rows else 1
        return ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)] or [table])

    def map_values(self, fn: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]:
        if not len(values):
            return []
        step = -(-len(values) // self.partitions(len(values)))
        chunks = [list(values[i:i + step]) for i in range(0, len(values), step)]
        return [result for results in self.chunked(_apply, chunks, fn_kwargs={"fn": fn}) for result in results]

    def chunked(self, udf: Any, chunks: list[list[Any]], **options: Any) -> list[list[Any]]:
        """`udf` over chunks of Python values, one dataset row per chunk; each chunk's results, in order.

        The chunks travel through Ray's object store (`ray.put`) and the results as Ray Data object columns, so
        payloads of any type (str, bytes, None, NaN) reach the function exactly as the local engine passes them.
        """
        import pyarrow as pa
        import ray
        import ray.data

        refs = [ray.put(chunk) for chunk in chunks]
        table = pa.table({"chunk": np.arange(len(chunks), dtype=np.int64)})
        ds = ray.data.from_arrow([table.slice(i, 1) for i in range(len(chunks))])  # a block per chunk
        fn_kwargs = {**options.pop("fn_kwargs", {}), "refs": refs}
        mapped = ds.map_batches(udf, batch_size=1, batch_format="numpy", fn_kwargs=fn_kwargs, **options)
        out: list[list[Any]] = [[None] * len(chunk) for chunk in chunks]
        for batch in mapped.iter_batches(batch_format="numpy", batch_size=None):
            for chunk, item, result in zip(batch["chunk"], batch["item"], batch["out"]):
                out[int(chunk)][int(item)] = result.value
        return out

    def group_positions(self, keys: Sequence[str | None]) -> list[list[int]]:
        import pyarrow as pa

        present = [(i, k) for i, k in enumerate(keys) if k is not None]
        if len(present) < 2:
            return []
        ds = self.dataset({"pos": pa.array([i for i, _ in present], pa.int64()),
                           "key": pa.array([k for _, k in present], pa.string())})
        parts = self.partitions(len(present))
        grouped = (ds.map_batches(_key_partition, fn_kwargs={"parts": parts}, batch_format="pyarrow")
                   .groupby("part", num_partitions=parts).map_groups(_repeated, batch_format="pyarrow"))
        groups: dict[int, list[int]] = {}
        for batch in grouped.iter_batches(batch_format="pyarrow", batch_size=None):
            for pos, first in zip(batch["pos"].to_pylist(), batch["first"].to_pylist()):
                groups.setdefault(first, []).append(pos)
        # the local engine's order: groups by first appearance, members ascending
        return [sorted(groups[first]) for first in sorted(groups)]

    def near_duplicate_pairs(self, modality: Any, params: Any, payloads: Sequence[Any]) -> np.ndarray:
        plan = NEAR_DUPLICATE_PLANS.get(modality.near_duplicate_method, _collected)
        return plan(self, modality, params, payloads)

    def map_chunks(self, setup: Callable[[], Callable[[list[Any]], Any]], values: Sequence[Any], *,
                   chunk_size: int) -> list[Any]:
        import ray
        import ray.data

        if not len(values):
            return []
        chunks = [[list(values[i:i + chunk_size])] for i in range(0, len(values), chunk_size)]
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = max(1, min(len(chunks), gpus or self.cpus))
        # the actors hold every CPU (or GPU) while they live: nothing else may sit in this pipeline, or it waits
        per_chunk = self.chunked(_ChunkActor, chunks, fn_constructor_kwargs={"setup": setup},
                                 compute=ray.data.ActorPoolStrategy(size=actors),
                                 **({"num_gpus": 1} if gpus else {"num_cpus": 1}))
        return [results[0] for results in per_chunk]


# ---------------------------------------------------------------- tasks (run on the workers)


def _objects(items: list[Any]) -> np.ndarray:
    """A 1-d object array of `items` (np.array would turn a list of tuples or arrays into a 2-d array)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


class _Boxed:
    """One result, boxed: Ray Data turns an object column of tuples into arrays (a `(bytes, str)` came back as
    a numpy bytes array), while an object it does not know travels pickled, exactly as the function returned it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _apply(batch: dict[str, np.ndarray], *, fn: Callable[[Any], Any], refs: list[Any]) -> dict[str, np.ndarray]:
    import ray

    (chunk,) = batch["chunk"]
    results = [_Boxed(fn(value)) for value in ray.get(refs[chunk])]
    return {"chunk": np.full(len(results), chunk), "item": np.arange(len(results)), "out": _objects(results)}


def _key_partition(batch: Any, *, parts: int) -> Any:
    """The shuffle key: a partition number from the key's CRC32, so one task sees every row of a key.

    Grouping by the key itself would call the group function once per distinct key (millions of tiny calls);
    grouping by `parts` partitions calls it once per partition, which then groups its rows vectorised.
    """
    import zlib

    import pyarrow as pa

    parts_of = [zlib.crc32(k.encode()) % parts for k in batch["key"].to_pylist()]
    return batch.append_column("part", pa.array(parts_of, pa.int32()))


class _ChunkActor:
    """An actor of the pool: `setup()` once (loads the model), then one chunk per call."""

    def __init__(self, setup: Callable[[], Callable[[list[Any]], Any]]) -> None:
        self.fn = setup()

    def __call__(self, batch: dict[str, np.ndarray], *, refs: list[Any]) -> dict[str, np.ndarray]:
        return _apply(batch, fn=self.fn, refs=refs)


def _repeated(partition: Any) -> Any:
    """Rows of this partition whose key occurs more than once, each with its group's first position."""
    import pyarrow as pa

    frame = partition.select(["pos", "key"]).to_pandas()
    by_key = frame.groupby("key")["pos"]
    size, first = by_key.transform("size").to_numpy(), by_key.transform("min").to_numpy()
    repeated = size > 1
    return pa.table({"pos": frame["pos"].to_numpy()[repeated].astype(np.int64),
                     "first": first[repeated].astype(np.int64)})


def _band_rows(batch: Any, *, ngram: int, num_perm: int, bands: int, seed: int, parts: int) -> Any:
    """One row per (document, band): the band's bucket key, its shuffle partition, the document's position and text."""
    import pyarrow as pa

    texts = batch["doc"].to_pylist()
    hashes, offsets = shingles(texts, ngram=ngram)
    keys = band_keys(minhash(hashes, offsets, num_perm=num_perm, seed=seed), bands=bands).ravel()
    repeat = np.repeat(np.arange(len(texts)), bands)
    # the keys are splitmix64 outputs, uniform: their residue spreads the buckets evenly over the partitions
    return pa.table({"part": (keys % np.uint64(parts)).astype(np.int32),
                     "band": np.tile(np.arange(bands, dtype=np.int32), len(texts)), "key": keys,
                     "pos": batch["pos"].to_numpy()[repeat], "doc": batch["doc"].take(pa.array(repeat))})


def _verified_pairs(partition: Any, *, ngram: int, threshold: float) -> Any:
    """The pairs sharing a (band, key) bucket in this partition whose exact shingle Jaccard reaches `threshold`.

    Global positions, i < j. Candidates are found per band with the local engine's `pairs_in_buckets`.
    """
    import pyarrow as pa

    band, key, pos = (partition[c].to_numpy() for c in ("band", "key", "pos"))
    n = len(pos)
    codes = [np.empty(0, dtype=np.int64)]
    for b in np.unique(band):
        rows = np.flatnonzero(band == b)
        local = pairs_in_buckets(key[rows])
        codes.append(rows[local // len(rows)] * n + rows[local % len(rows)])
    codes = np.concatenate(codes)
    if not len(codes):
        return pa.table({"i": pa.array([], pa.int64()), "j": pa.array([], pa.int64())})
    # a document pair sharing several bands in this partition is verified once
    row_pairs = np.stack([codes // n, codes % n], axis=1)
    swap = pos[row_pairs[:, 0]] > pos[row_pairs[:, 1]]
    row_pairs[swap] = row_pairs[swap][:, ::-1]
    doc_pairs, first = np.unique(pos[row_pairs], axis=0, return_index=True)
    row_pairs = row_pairs[first]
    left, right = doc_pairs[:, 0], doc_pairs[:, 1]
    # one text per document, shingled once
    documents, first_row = np.unique(doc_pairs.ravel(), return_index=True)
    rows_of = row_pairs.ravel()[first_row]
    texts = partition["doc"].take(pa.array(rows_of)).to_pylist()
    hashes, offsets = shingles(texts, ngram=ngram)
    pairs = np.stack([np.searchsorted(documents, left), np.searchsorted(documents, right)], axis=1).astype(np.int64)
    keep = jaccard_pairs(hashes, offsets, pairs) >= threshold
    return pa.table({"i": left[keep], "j": right[keep]})


def _image_rows(batch: Any) -> Any:
    import pyarrow as pa

    hashes, small = image_signatures(batch["payload"].to_pylist())
    return pa.table({"pos": batch["pos"], "phash": hashes,
                     "small": pa.array([row.tobytes() for row in small], pa.binary())})


# ---------------------------------------------------------------- near-duplicate plans, per modality


def _minhash_pairs(engine: RayEngine, modality: Any, params: Any, payloads: Sequence[str]) -> np.ndarray:
    import pyarrow as pa

    n = len(payloads)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    nd = params.near_duplicates
    ds = engine.dataset({"pos": np.arange(n, dtype=np.int64), "doc": pa.array(list(payloads), pa.large_string())})
    parts = engine.partitions(n * nd.bands)
    rows = ds.map_batches(_band_rows, batch_format="pyarrow", fn_kwargs={
        "ngram": nd.ngram, "num_perm": nd.num_perm, "bands": nd.bands, "seed": nd.seed, "parts": parts})
    verified = rows.groupby("part", num_partitions=parts).map_groups(
        _verified_pairs, batch_format="pyarrow", fn_kwargs={"ngram": nd.ngram, "threshold": nd.threshold})
    codes = [np.empty(0, dtype=np.int64)]
    for batch in verified.iter_batches(batch_format="pyarrow", batch_size=None):
        codes.append(batch["i"].to_numpy() * n + batch["j"].to_numpy())
    # a pair found in several bands is verified once per band; the local engine's sorted unique pairs remain
    unique = np.unique(np.concatenate(codes))
    return np.stack([unique // n, unique % n], axis=1).astype(np.int64)


def _phash_pairs(engine: RayEngine, modality: Any, params: Any, payloads: Sequence[bytes]) -> np.ndarray:
    import pyarrow as pa

    n = len(payloads)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    ds = engine.dataset({"pos": np.arange(n, dtype=np.int64), "payload": pa.array(list(payloads), pa.binary())})
    hashes = np.zeros(n, dtype=np.uint64)
    small = np.zeros((n, 256), dtype=np.float64)
    for batch in ds.map_batches(_image_rows, batch_format="pyarrow").iter_batches(batch_format="pyarrow",
                                                                                   batch_size=None):
        pos = batch["pos"].to_numpy()
        hashes[pos] = batch["phash"].to_numpy()
        small[pos] = np.stack([np.frombuffer(b, dtype=np.float64) for b in batch["small"].to_pylist()])
    nd = params.near_duplicates
    pairs, _ = image_pairs(hashes, small, max_distance=nd.max_distance, min_correlation=nd.min_correlation)
    return pairs


def _collected(engine: RayEngine, modality: Any, params: Any, payloads: Sequence[Any]) -> np.ndarray:
    pairs, _ = modality.near_duplicate_pairs(list(payloads), params)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


# A modality whose near_duplicate_method has no plan here still runs under `ray`: its pairs are computed on the collected payloads.
NEAR_DUPLICATE_PLANS: dict[str | None, Callable[[RayEngine, Any, Any, Sequence[Any]], np.ndarray]] = {
    "minhash": _minhash_pairs,
    "phash": _phash_pairs,
}
