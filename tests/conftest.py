"""Shared test set-up: offline hubs, a git identity for DVC, small helpers for tiny records."""

from __future__ import annotations

import io
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for key, value in {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
                   "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(autouse=True)
def _restore_mlflow_uris():
    """Undo what `mlflow.set_tracking_uri`/`set_registry_uri` leave behind: the process-wide URIs and the
    MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI they write into os.environ (which subprocesses inherit). Without
    this, a test that configured MLflow points every later test's lookups, and every later pipeline's
    registrations, at its own store."""
    import sys

    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # None: follow the tracking URI again
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def png_bytes(size: tuple[int, int] = (28, 28), *, mode: str = "L", value: int = 128, fmt: str = "PNG") -> bytes:
    """A small solid image with a diagonal stripe, encoded in `fmt`."""
    from PIL import Image, ImageDraw

    image = Image.new(mode, size, color=value if mode == "L" else (value, value // 2, 255 - value))
    ImageDraw.Draw(image).line([(0, 0), (size[0] - 1, size[1] - 1)], fill=255 - value if mode == "L" else (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def dead_worker() -> str:
    """A worker id (`host:pid`) of this host whose process has exited, as after `kill -9`."""
    import socket
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return f"{socket.gethostname()}:{process.pid}"


def live_worker() -> str:
    """A worker id of a process that outlives the test (pytest's parent)."""
    import socket

    return f"{socket.gethostname()}:{os.getppid()}"


@pytest.fixture
def make_png():
    return png_bytes
