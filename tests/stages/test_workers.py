"""Code tests for stages/workers.py: worker ids and liveness, against real processes."""

from __future__ import annotations

import os
import socket

import pytest

from stages.workers import is_dead_local_worker, worker_id
from tests.conftest import dead_worker, live_worker


def test_worker_id_is_host_and_pid():
    assert worker_id() == f"{socket.gethostname()}:{os.getpid()}"


@pytest.mark.parametrize("worker,dead", [
    (None, True),                      # a trial that never recorded its worker cannot be waited for
    ("", True),
    ("some-other-host:1", False),      # another machine's worker: not ours to judge
    (f"{socket.gethostname()}:not-a-pid", False),
])
def test_liveness_of_odd_ids(worker, dead):
    assert is_dead_local_worker(worker) is dead


def test_an_exited_process_is_dead_and_a_running_one_is_not():
    assert is_dead_local_worker(dead_worker())
    assert not is_dead_local_worker(live_worker())
