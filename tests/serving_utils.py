"""Start `mlflow models serve` on 127.0.0.1 against a repository's registry, and talk to it over real HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.pipeline_utils import env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_serve(repo: Path, model_uri: str, *, timeout: float = 180) -> Iterator[str]:
    """`mlflow models serve -m MODEL_URI --env-manager local` bound to 127.0.0.1 (as `make serve` runs it), from
    `repo` with its SQLite store; yields the base URL once /ping answers; stops the server (its process group)."""
    port = free_port()
    server_env = {**env(), "MLFLOW_TRACKING_URI": f"sqlite:///{repo.resolve() / 'mlflow.db'}"}
    log = tempfile.TemporaryFile("w+")  # the server's output, for the error; nothing is written into `repo`

    def tail() -> str:
        log.seek(0)
        return log.read()[-4000:]

    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=repo, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"mlflow models serve -m {model_uri} exited {process.returncode}:\n{tail()}")
            with contextlib.suppress(OSError):
                if get(url + "/ping")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow models serve -m {model_uri} did not answer /ping in {timeout:.0f} s:\n"
                                     f"{tail()}")
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def post(url: str, body: bytes | dict, *, timeout: float = 120) -> tuple[int, bytes]:
    """POST JSON to `url` (a dict is encoded); the status and body, error statuses included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def split_frame(column: str, values: list) -> dict:
    """A `dataframe_split` request body: one column, one value per row."""
    return {"dataframe_split": {"columns": [column], "data": [[v] for v in values]}}
