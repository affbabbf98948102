"""Worker liveness: who a training worker is (`host:pid`) and whether a worker of this host has died.

A building block below both `train` (which fails the Optuna trials a dead worker left RUNNING) and
`tracking` (which ends the MLflow runs it left RUNNING), so neither has to reach into the other.
"""

from __future__ import annotations

import os
import socket


def worker_id() -> str:
    """This process as a worker: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead_local_worker(worker: str | None) -> bool:
    """True for a worker id of this host whose process no longer exists."""
    if not worker:
        return True
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return int(pid) == os.getpid()
