"""Parallel Optuna workers against a real PostgreSQL server that the test starts itself.

SQLite locks up under parallel writers (optuna#820); an RDB URL in `train.storage` is how several processes
or machines share one study. The server runs from a throwaway data dir on a free 127.0.0.1 port (unix socket in
the same dir), as the `postgres` user when the test runs as root, since postgres refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

import pytest


def pg_bin(name: str) -> str | None:
    """Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin, off PATH."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not (pg_bin("initdb") and pg_bin("pg_ctl")),
                       reason="PostgreSQL server binaries (initdb, pg_ctl) are not installed"),
]

N_WORKERS = 2
TRIALS_PER_WORKER = 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' user to run the server as")
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="module")
def postgres_url():
    """Start a fresh PostgreSQL cluster, create database `optuna`, yield its SQLAlchemy URL, stop and remove it."""
    # not under pytest's tmp dir: that is private to the test user and the server may run as another
    as_server_user([])  # skips early where root has no `postgres` user to run the server as
    root = Path(tempfile.mkdtemp(prefix="pg-test-"))
    if os.geteuid() == 0:
        server_user = pwd.getpwnam("postgres")
        os.chown(root, server_user.pw_uid, server_user.pw_gid)
    data, log, port = root / "data", root / "server.log", free_port()
    subprocess.run(as_server_user([pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                   "-E", "UTF8", "--no-sync", "--no-instructions"]),
                   check=True, capture_output=True, text=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    started = subprocess.run(as_server_user([pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                                             "-w", "-t", "60", "start"]), capture_output=True, text=True)
    try:
        if started.returncode != 0:
            raise AssertionError(f"pg_ctl start failed:\n{started.stdout}{started.stderr}\n"
                                 f"{log.read_text() if log.exists() else ''}")
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("CREATE DATABASE optuna")
        admin.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(as_server_user([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, text=True)
        shutil.rmtree(root, ignore_errors=True)


# Each worker is its own process, as `train.n_workers` and extra machines are: they share nothing but the storage.
WORKER = textwrap.dedent("""
    import os, sys, time
    import optuna

    url, name, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    study = optuna.load_study(study_name=name, storage=storage)

    def objective(trial):
        x = trial.suggest_float("x", -5.0, 5.0)
        trial.set_user_attr("worker", os.getpid())
        for step in range(3):
            trial.report(-(x - step) ** 2, step)
            time.sleep(0.02)  # long enough that the two workers' trials interleave
        return -(x - 1.0) ** 2

    study.optimize(objective, n_trials=n_trials)
""")


def test_two_workers_share_one_study_without_losing_or_duplicating_trials(postgres_url, tmp_path):
    import optuna

    name = "parallel-workers"
    optuna.create_study(study_name=name, storage=postgres_url, direction="maximize",
                        sampler=optuna.samplers.TPESampler(seed=0))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [subprocess.Popen([sys.executable, str(script), postgres_url, name, str(TRIALS_PER_WORKER)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(N_WORKERS)]
    for worker in workers:
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output

    trials = optuna.load_study(study_name=name, storage=postgres_url).get_trials(deepcopy=False)
    expected = N_WORKERS * TRIALS_PER_WORKER
    numbers = Counter(t.number for t in trials)
    assert sorted(numbers) == list(range(expected)), f"trial numbers {sorted(numbers)}"
    assert all(count == 1 for count in numbers.values()), f"duplicated: {[n for n, c in numbers.items() if c > 1]}"
    assert len({t._trial_id for t in trials}) == expected
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(len(t.intermediate_values) == 3 for t in trials)
    by_worker = Counter(t.user_attrs["worker"] for t in trials)
    assert sorted(by_worker) == sorted(w.pid for w in workers), "each worker process ran trials of the shared study"
    assert sum(by_worker.values()) == expected
