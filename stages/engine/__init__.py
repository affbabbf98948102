"""The engine the data stages run their heavy steps on: `local` (this process) or `ray` (Ray Data).

`params.base.engine` chooses it: `{kind: local | ray, address: null, num_cpus: null}`. A stage opens the
engine once (`open_engine`) and hands it to its pure core, which calls three primitives whatever the kind:

- `map_values(fn, values)`: `fn` on every value, results in input order (clean's per-row normalisation and
  content hash, split's hash assignment, augment's transforms with the draws made beforehand);
- `group_positions(keys)`: positions sharing a non-null key, groups of two or more (clean's exact duplicates);
- `near_duplicate_pairs(modality, params, payloads)`: the verified near-duplicate pairs that
  `modality.near_duplicate_pairs` returns, as the same sorted array;
- `map_chunks(setup, values, chunk_size=...)`: `setup()` once per worker (a model, say), then the function it
  returns on consecutive chunks of `values`, results in order (label's encoder features: one chunk is one
  encoder batch, so every row is encoded in the same batch as locally).

Every primitive returns exactly what the local one returns, so outputs, metrics and quarantine rows do not
depend on the engine; only where the work runs does. The core keeps everything else (which row wins, which
reason, the metrics) in one place for both kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stages.common import StageError, build


@dataclass(frozen=True)
class EngineParams:
    kind: str                        # local | ray
    address: str | None              # ray: null starts a local Ray instance; "host:port", "ray://host:10001" or "auto"
    num_cpus: int | None             # ray, local instance only: CPUs it may use (null: all)


class Engine(Protocol):
    distributed: bool                # False: everything runs in this process (progress bars, no serialisation)

    def map_values(self, fn: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]: ...

    def group_positions(self, keys: Sequence[str | None]) -> list[list[int]]: ...

    def near_duplicate_pairs(self, modality: Any, params: Any, payloads: Sequence[Any]) -> np.ndarray: ...

    def map_chunks(self, setup: Callable[[], Callable[[list[Any]], Any]], values: Sequence[Any], *,
                   chunk_size: int) -> list[Any]: ...


class LocalEngine:
    """Today's behaviour: every step in this process."""

    distributed = False

    def map_values(self, fn: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]:
        return [fn(v) for v in values]

    def group_positions(self, keys: Sequence[str | None]) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if key is not None:
                groups.setdefault(key, []).append(i)
        return [members for members in groups.values() if len(members) > 1]

    def near_duplicate_pairs(self, modality: Any, params: Any, payloads: Sequence[Any]) -> np.ndarray:
        pairs, _ = modality.near_duplicate_pairs(list(payloads), params)
        return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def map_chunks(self, setup: Callable[[], Callable[[list[Any]], Any]], values: Sequence[Any], *,
                   chunk_size: int) -> list[Any]:
        if not len(values):
            return []
        fn = setup()
        return [fn(list(values[i:i + chunk_size])) for i in range(0, len(values), chunk_size)]


LOCAL = LocalEngine()


@contextmanager
def _local(params: EngineParams) -> Iterator[Engine]:
    yield LOCAL


def _ray(params: EngineParams) -> Any:
    from stages.engine.ray_data import ray_engine  # ray is imported only when asked for

    return ray_engine(params)


ENGINES: dict[str, Callable[[EngineParams], Any]] = {"local": _local, "ray": _ray}


def engine_params(params: dict[str, Any]) -> EngineParams:
    """`params.base.engine` as a frozen dataclass (one line naming a missing or unknown key)."""
    return build(EngineParams, (params.get("base") or {}).get("engine"), "base.engine")


@contextmanager
def open_engine(params: EngineParams) -> Iterator[Engine]:
    """The engine `params.kind` names, ready for the block; a Ray instance it started is stopped after it."""
    try:
        opener = ENGINES[params.kind]
    except KeyError:
        raise StageError(f"params.yaml: base.engine.kind: {params.kind!r} is not one of {sorted(ENGINES)}") from None
    with opener(params) as engine:
        yield engine
