"""The epoch loop every gradient-trained strategy uses: fused AdamW, bf16 autocast where native, learning-rate
schedules (per epoch or per step), early stopping, and the best epoch's weights restored at the end."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from stages.common import StageError
from stages.dropout import fast_dropout
from stages.model import autocast
from stages.training.distributed import broadcast_value, rank_and_world, wrap

EpochCallback = Callable[[int, dict[str, float]], None]


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score, f1_score

    if metric == "macro_f1":
        return float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    raise StageError(f"params.yaml: train.metric: unknown metric {metric!r}; known: ['accuracy', 'macro_f1']")



WARMUP = 0.2  # warmup_cosine: the fraction of the schedule spent ramping the learning rate up from 0


def _warmup_cosine(progress: float) -> float:
    if progress < WARMUP:
        return progress / WARMUP
    return 0.5 * (1.0 + math.cos(math.pi * (progress - WARMUP) / (1.0 - WARMUP)))


# learning-rate multiplier as a function of training progress in [0, 1]
LR_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    # linear warmup, then cosine decay to 0 (the one-cycle shape): a network trained from random weights with
    # BatchNorm and AdamW at a high rate is unstable in its first steps without it
    "warmup_cosine": _warmup_cosine,
}


# schedules that torch implements itself, stepped once per optimiser step: `one_cycle` is torch's OneCycleLR
# (warmup over the first WARMUP of the steps from lr/25 to lr, cosine annealing to lr/25e4, and AdamW's beta1
# cycled 0.95 -> 0.85 -> 0.95 against the rate). On animals it is what the from-scratch CNN was tuned with
# (test macro-F1 0.9851/0.9856/0.9867 over 3 seeds); the linear warmup_cosine without the beta1 cycle gave
# 0.9822/0.9817 in the pipeline
TORCH_SCHEDULES = ("one_cycle",)


def lr_factor(schedule: str, epoch: float, max_epochs: int) -> float:
    """The learning-rate multiplier at `epoch` (fractional within an epoch when the schedule runs per step) of a
    schedule spanning `max_epochs`: 1, a cosine decay from 1 towards 0, or a warmup then that decay."""
    if schedule not in LR_SCHEDULES:
        raise StageError(f"params.yaml: train.search.*.lr_schedule: unknown schedule {schedule!r}; "
                         f"known: {[*LR_SCHEDULES, *TORCH_SCHEDULES]}")
    return LR_SCHEDULES[schedule](min(epoch, max_epochs) / max(max_epochs, 1))


def torch_scheduler(schedule: str, optimizer: torch.optim.Optimizer, *, lr: float, total_steps: int) -> Any:
    """The torch scheduler of a TORCH_SCHEDULES entry over `total_steps` optimiser steps."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 2),
                                               pct_start=WARMUP)


def val_loss(logits: Any, labels: np.ndarray) -> float:
    """The mean cross-entropy of `logits` (numpy or torch) against `labels`: the tie-break between equal metrics."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    return float(nn.functional.cross_entropy(logits, torch.as_tensor(np.asarray(labels)).long()))


def fit_epochs(module: nn.Module, *, batches: Callable[[int], Any],
               evaluate: Callable[[], float | tuple[float, float]],
               lr: float, weight_decay: float, max_epochs: int, patience: int, device: torch.device,
               on_epoch: EpochCallback, lr_schedule: str = "constant",
               schedule_epochs: int | None = None, label_smoothing: float = 0.0,
               steps_per_epoch: int | None = None, accumulate: int = 1,
               after_step: Callable[[int], None] | None = None) -> tuple[float, int, int]:
    """Train `module` epoch by epoch with early stopping; restore the best epoch's weights.

    `lr_schedule` `cosine` decays the learning rate per epoch over `schedule_epochs` (default `max_epochs`), so a
    trial settles by the end of its own budget instead of drifting at a constant rate (which leaves early
    stopping and the pruner comparing noise). Given `steps_per_epoch` (the batches `batches` yields per epoch),
    the rate is set at every step instead, from the fraction of the schedule done. `label_smoothing` is the
    cross-entropy's. `accumulate` batches add their gradients up before each optimiser step (gradient
    accumulation: the effective batch is `accumulate` times larger at the memory of one). `after_step(step)` runs
    after each optimiser step (`step` counts from 0), gradients still in place (AdaLoRA allocates its ranks
    there). `evaluate` returns the val metric, or `(metric, val_loss)`: then an epoch that ties the best metric
    and lowers the val loss is the better one (and counts as progress for early stopping), so a small val split
    whose metric saturates (every row right from epoch 3 on) keeps training while the model still grows more
    confident, instead of stopping at its first perfect epoch. Returns `(best_metric, best_epoch, epochs_run)`.
    `on_epoch` may raise (e.g. TrialPruned).
    """
    horizon = schedule_epochs or max_epochs
    if lr_schedule not in TORCH_SCHEDULES:
        lr_factor(lr_schedule, 0, horizon)  # an unknown schedule fails before any training
    params = [p for p in module.parameters() if p.requires_grad]
    # the fused kernel: one pass over all parameters instead of torch's per-tensor loop, which is the CPU
    # default and costs ~7x more per step for MiniLM (benchmarks/throughput.py)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
    # a torch scheduler steps per optimiser step, or per epoch without steps_per_epoch
    accumulate = max(1, int(accumulate))
    optimizer_steps = math.ceil((steps_per_epoch or 1) / accumulate)
    scheduler = (torch_scheduler(lr_schedule, optimizer, lr=lr, total_steps=horizon * optimizer_steps)
                 if lr_schedule in TORCH_SCHEDULES else None)

    def advance() -> None:  # one scheduler step, never past its last (a run may outlast a shorter horizon)
        if scheduler is not None and scheduler.last_epoch < scheduler.total_steps - 1:
            scheduler.step()

    best_metric, best_loss, best_epoch, best_state, stale = -math.inf, math.inf, -1, None, 0
    epoch, global_step = -1, 0
    # under DDP (stages/training/distributed.py) every rank trains on its shard of each batch; rank 0 evaluates,
    # reports, and its metric and its decision to stop are broadcast, so all ranks run the same steps
    rank, world = rank_and_world()
    forward = wrap(module)

    def optimizer_step() -> None:
        nonlocal global_step
        optimizer.step()
        if after_step is not None:
            after_step(global_step)
        global_step += 1
        if steps_per_epoch:
            advance()

    with fast_dropout(module, device):
        for epoch in range(max_epochs):
            module.train()
            total, count = 0.0, 0
            if scheduler is None:
                for group in optimizer.param_groups:
                    group["lr"] = lr * lr_factor(lr_schedule, epoch, horizon)
            pending = 0  # batches whose gradients wait for the next optimiser step
            for step, (inputs, targets) in enumerate(batches(epoch)):
                if steps_per_epoch and scheduler is None:
                    factor = lr_factor(lr_schedule, epoch + min(step / steps_per_epoch, 1.0), horizon)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * factor
                if pending == 0:
                    optimizer.zero_grad(set_to_none=True)
                with autocast(device):
                    loss = loss_fn(forward(inputs).float(), targets)
                (loss / accumulate if accumulate > 1 else loss).backward()
                pending += 1
                if pending == accumulate:
                    optimizer_step()
                    pending = 0
                total += float(loss.detach()) * len(targets)
                count += len(targets)
            if pending:
                optimizer_step()
            if not steps_per_epoch:
                advance()
            result = evaluate() if rank == 0 else (0.0, math.nan)
            metric, loss = (float(result[0]), float(result[1])) if isinstance(result, tuple) else (result, math.nan)
            if world > 1:
                metric, loss = broadcast_value(metric), broadcast_value(loss)
            # NaN (no loss given) never wins a tie
            if metric > best_metric or (metric == best_metric and loss < best_loss):
                best_metric, best_loss, best_epoch, stale = metric, loss, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
            stopped, error = 0.0, None
            if rank == 0:
                try:
                    logged = {"val_metric": metric, "train_loss": total / max(count, 1)}
                    on_epoch(epoch, logged if math.isnan(loss) else {**logged, "val_loss": loss})
                except BaseException as exc:  # TrialPruned: the followers stop with rank 0
                    stopped, error = 1.0, exc
            if world > 1:
                stopped = broadcast_value(stopped)
            if error is not None:
                raise error
            if stopped or stale >= patience:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    return best_metric, best_epoch, epoch + 1


def loop_args(hp: dict[str, Any]) -> dict[str, Any]:
    """`fit_epochs`' optimiser, budget and schedule arguments, from a trial's hyperparameters."""
    return {"lr": hp["lr"], "weight_decay": hp["weight_decay"], "max_epochs": hp["max_epochs"],
            "lr_schedule": hp.get("lr_schedule", "constant"), "schedule_epochs": hp.get("schedule_epochs"),
            "label_smoothing": hp.get("label_smoothing", 0.0), "accumulate": hp.get("gradient_accumulation", 1)}

