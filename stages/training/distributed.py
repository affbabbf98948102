"""One trial's training on several processes: PyTorch DDP (gloo on CPU, nccl on CUDA) on 127.0.0.1.

`fit_distributed` runs the strategy's `fit` as rank 0 in this process, the one that talks to Optuna and MLflow,
and as ranks 1.. in `spawn`ed followers that train with the same hyperparameters and seed on their shard of each
batch. `fit_epochs` does the rest when a process group is up: gradients are averaged by DDP, rank 0 evaluates and
broadcasts the metric, and its decision to stop (early stopping, or the pruner's TrialPruned) is broadcast, so
every rank runs the same number of steps. At the end each follower sends a digest of its weights, and rank 0
checks that every rank holds the same model.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import socket
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init(rank: int, world: int, port: int, device: torch.device) -> None:
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def _follower(rank: int, world: int, port: int, strategy: Any, hp: dict[str, Any], seed: int, threads: int,
              digests: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    _init(rank, world, port, strategy.device)
    try:
        result = strategy.fit(hp, lambda epoch, metrics: None, seed=seed)
        digests.put((rank, state_digest(result.model)))
    finally:
        dist.destroy_process_group()


def _collect(digests: Any, followers: list[Any]) -> dict[int, str]:
    """Each follower's `(rank, digest)`; a follower that died without sending one fails the trial, not a wait."""
    import queue

    theirs: dict[int, str] = {}
    while len(theirs) < len(followers):
        try:
            rank, digest = digests.get(timeout=5)
            theirs[rank] = digest
        except queue.Empty:
            dead = [p.name for p in followers if not p.is_alive() and p.exitcode != 0]
            if dead:
                raise StageError(f"train: DDP follower(s) {dead} exited non-zero; see the log above") from None
    return theirs


def fit_distributed(strategy: Any, hp: dict[str, Any], on_epoch: Callable[[int, dict[str, float]], None], *,
                    seed: int, nproc: int) -> Any:
    """`strategy.fit(hp, on_epoch, seed=seed)` on `nproc` processes; rank 0's FitResult (the others' models are the
    same, which is checked). `nproc` 1 is the plain call."""
    if nproc <= 1:
        return strategy.fit(hp, on_epoch, seed=seed)
    import torch.distributed as dist

    port = _free_port()
    context = multiprocessing.get_context("spawn")
    digests = context.Queue()
    threads = max(1, torch.get_num_threads() // nproc)
    followers = [context.Process(target=_follower, args=(rank, nproc, port, strategy, hp, seed, threads, digests),
                                 name=f"ddp-rank-{rank}", daemon=True) for rank in range(1, nproc)]
    for process in followers:
        process.start()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    _init(0, nproc, port, strategy.device)
    try:
        result = strategy.fit(hp, on_epoch, seed=seed)
        ours = state_digest(result.model)
        theirs = _collect(digests, followers)
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(saved_threads)
        for process in followers:
            process.join(timeout=60)
    failed = [p.name for p in followers if p.exitcode != 0]
    if failed:
        raise StageError(f"train: DDP follower(s) {failed} exited non-zero; see the log above")
    diverged = sorted(rank for rank, digest in theirs.items() if digest != ours)
    if diverged:
        raise StageError(f"train: DDP ranks {diverged} ended with weights different from rank 0's")
    return result
