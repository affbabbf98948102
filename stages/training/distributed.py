"""One trial's training on several processes: PyTorch DDP (gloo on CPU, nccl on CUDA) on 127.0.0.1, launched by
torchrun's own engine (`torch.distributed.launcher.api.elastic_launch`: the c10d rendezvous, one agent watching
the ranks, no restarts).

`fit_distributed` launches `nproc` ranks that each run the strategy's `fit` with the same hyperparameters and
seed on their shard of each batch; this process, the one that talks to Optuna and MLflow, waits on them. Rank 0
hands each epoch's metrics to this process, which calls the trial's `on_epoch` (MLflow logging, Optuna's report
and pruner) and answers go on or stop; `fit_epochs` does the rest with the process group: gradients are averaged
by DDP, rank 0 evaluates and broadcasts the metric and its decision to stop (early stopping, or the pruner's
TrialPruned raised here), so every rank runs the same number of steps. At the end rank 0 returns its model's
checkpoint and every rank a digest of its weights; this process checks that every rank holds the same model and
restores rank 0's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import os
import queue
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from stages.common import StageError


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes training together (0, 1 without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_value(value: float) -> float:
    """Rank 0's `value` on every rank."""
    import torch.distributed as dist

    tensor = torch.tensor([float(value)], dtype=torch.float64)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def wrap(module: nn.Module) -> nn.Module:
    """`module` under DDP when several processes train it, else unchanged."""
    if rank_and_world()[1] <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # an encoder's pooler (BERT's) takes no part in our pooled features: its parameters get no gradient
    return DistributedDataParallel(module, find_unused_parameters=True)


def shard(indices: Any) -> Any:
    """This rank's share of one batch's row indices (every rank gets the same count, so none waits on another)."""
    rank, world = rank_and_world()
    if world <= 1:
        return indices
    usable = len(indices) - len(indices) % world
    return indices[:usable][rank::world]


def state_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


class _Stopped(Exception):
    """Raised in rank 0 by the relayed `on_epoch` when this process's `on_epoch` raised: rank 0 stops with it."""


@dataclasses.dataclass
class _RankOutcome:
    digest: str | None                # the rank's weights (None: rank 0 stopped on this process's word)
    # rank 0's FitResult, its model as `Strategy.checkpoint` tensors (a built model need not pickle)
    state: dict[str, torch.Tensor] | None = None
    best_metric: float = float("nan")
    best_epoch: int = -1
    epochs_run: int = 0


def _relay(epochs: Any, verdicts: Any) -> Callable[[int, dict[str, float]], None]:
    """Rank 0's `on_epoch`: the metrics go to the launching process, which answers with the trial's verdict."""
    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        epochs.put((epoch, metrics))
        while True:
            try:
                verdict = verdicts.get(timeout=5)
                break
            except queue.Empty:
                parent = multiprocessing.parent_process()
                if parent is not None and not parent.is_alive():
                    # the launching process was killed: nobody will read a result, and the followers' next
                    # collective fails once this rank is gone
                    os._exit(1)
        if verdict is not None:
            raise _Stopped(verdict)
    return on_epoch


def _rank(strategy: Any, hp: dict[str, Any], seed: int, threads: int, epochs: Any, verdicts: Any) -> _RankOutcome:
    """One rank, as elastic_launch starts it: RANK, WORLD_SIZE, MASTER_ADDR/PORT and LOCAL_RANK in the environment."""
    import torch.distributed as dist

    torch.set_num_threads(threads)
    rank = int(os.environ["RANK"])
    if strategy.device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    dist.init_process_group("nccl" if strategy.device.type == "cuda" else "gloo", init_method="env://")
    try:
        if rank != 0:
            return _RankOutcome(state_digest(strategy.fit(hp, lambda epoch, metrics: None, seed=seed).model))
        try:
            result = strategy.fit(hp, _relay(epochs, verdicts), seed=seed)
        except _Stopped:
            return _RankOutcome(None)
        return _RankOutcome(state_digest(result.model), strategy.checkpoint(result.model), result.best_metric,
                            result.best_epoch, result.epochs_run)
    finally:
        dist.destroy_process_group()


class _Without(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def _launch_failure(exc: BaseException) -> StageError:
    """One line for a launch that failed: the first rank to fail and its error (the launcher's error file)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if isinstance(exc, ChildFailedError):
        rank, failure = exc.get_first_failure()
        message = failure.message  # from the rank's error file: {"message": "<Type>: <text>", "extraInfo": ...}
        message = str(message.get("message", "") if isinstance(message, dict) else message or "").strip().splitlines()
        cause = message[0] if message else f"exit code {failure.exitcode}"
        return StageError(f"train: DDP rank {rank} failed (exit code {failure.exitcode}): {cause}")
    first = str(exc).strip().splitlines()
    return StageError(f"train: DDP launch failed: {type(exc).__name__}: {first[0] if first else ''}")


def fit_distributed(strategy: Any, hp: dict[str, Any], on_epoch: Callable[[int, dict[str, float]], None], *,
                    seed: int, nproc: int) -> Any:
    """`strategy.fit(hp, on_epoch, seed=seed)` on `nproc` processes launched as torchrun does; rank 0's FitResult
    (the others' models are the same, which is checked). `on_epoch` runs in this process and may raise (the
    ranks stop, then it is raised here). `nproc` 1 is the plain call."""
    if nproc <= 1:
        return strategy.fit(hp, on_epoch, seed=seed)
    import tempfile
    import threading
    import uuid

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    context = multiprocessing.get_context("spawn")
    epochs, verdicts = context.Queue(), context.Queue()
    threads = max(1, torch.get_num_threads() // nproc)
    launched: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ddp-") as logs:
        # torchrun --standalone: a c10d rendezvous on a free port of this host, one node, no restarts (a failed
        # rank fails the trial)
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                              rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
                              max_restarts=0, start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=logs))

        def launch() -> None:
            # off the main thread the launcher installs no signal handlers, so the stage's own signal behaviour
            # stands (and on_epoch, Optuna's and MLflow's calls, stays on the main thread). It warns about orphans
            # then: rank 0 exits when this process is gone (_relay) and the followers' collectives fail with it
            api_log = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
            # and a failed rank's traceback, logged by the launcher: _launch_failure says it in one line
            quiet = _Without("Failed to register signal handlers", "failed (exitcode")
            api_log.addFilter(quiet)
            try:
                launched["ranks"] = elastic_launch(config, _rank)(strategy, hp, seed, threads, epochs, verdicts)
            except BaseException as exc:  # re-raised below as one line
                launched["error"] = exc
            finally:
                api_log.removeFilter(quiet)

        launcher = threading.Thread(target=launch, name="ddp-launch", daemon=True)
        launcher.start()
        raised: BaseException | None = None
        while launcher.is_alive():
            try:
                epoch, metrics = epochs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                on_epoch(epoch, metrics)
                verdicts.put(None)
            except BaseException as exc:  # TrialPruned, or a failure of the trial's logging: the ranks stop
                raised = exc
                verdicts.put(f"{type(exc).__name__}: {exc}")
        launcher.join()
    if raised is not None:
        raise raised
    if "error" in launched:
        raise _launch_failure(launched["error"]) from None
    outcomes: dict[int, _RankOutcome] = launched["ranks"]
    ours = outcomes[0]
    diverged = sorted(rank for rank, outcome in outcomes.items() if outcome.digest != ours.digest)
    if diverged:
        raise StageError(f"train: DDP ranks {diverged} ended with weights different from rank 0's")
    from stages.training.strategy import FitResult  # strategy -> loop -> this module: imported at call time

    return FitResult(strategy.restore(ours.state, hp), ours.best_metric, ours.best_epoch, ours.epochs_run)
