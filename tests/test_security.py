"""Security properties that a grep (an AST walk, so comments and strings do not count) can hold the code to."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "stages").rglob("*.py"))


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node


def dotted(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else kw.value
    return None


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def test_there_are_sources_to_check():
    assert len(SOURCES) > 5


@pytest.mark.parametrize("banned", ["pickle.load", "pickle.loads", "cloudpickle.load", "joblib.load", "dill.load",
                                    "numpy.load", "np.load", "yaml.load", "yaml.unsafe_load", "torch.jit.load"])
def test_no_unsafe_deserialisation(banned):
    hits = [where(p, c) for p in SOURCES for c in calls(p) if dotted(c.func) == banned
            and not (banned in ("numpy.load", "np.load") and keyword(c, "allow_pickle") is False)]
    assert hits == [], f"{banned} on possibly untrusted data at {hits}"


def test_no_weights_only_false_anywhere():
    hits = [where(p, c) for p in SOURCES for c in calls(p) if keyword(c, "weights_only") is False]
    assert hits == []
    assert not [p for p in SOURCES if re.search(r"weights_only\s*=\s*False", p.read_text())]


def test_every_torch_load_is_weights_only():
    loads = [(p, c) for p in SOURCES for c in calls(p) if dotted(c.func) == "torch.load"]
    bad = [where(p, c) for p, c in loads if keyword(c, "weights_only") is not True]
    assert bad == [], f"torch.load without weights_only=True at {bad}"


def test_tar_extraction_uses_the_data_filter():
    extracts = [(p, c) for p in SOURCES for c in calls(p) if isinstance(c.func, ast.Attribute)
                and c.func.attr in ("extractall", "extract", "unpack_archive")]
    assert extracts, "no archive extraction found (the archive source should use tarfile with filter='data')"
    bad = [where(p, c) for p, c in extracts if keyword(c, "filter") != "data"]
    # zipfile has no filter: zip members must be written by our own checked loop, never extractall
    assert bad == [], f"extraction without filter='data' at {bad}"


def test_mlflow_ui_and_server_bind_to_loopback_only():
    for name in ("Makefile", "README.md"):
        text = (REPO / name).read_text()
        assert "0.0.0.0" not in text, name
        commands = [line for line in text.splitlines() if re.search(r"\bmlflow (ui|server|models serve)\b", line)]
        for i, line in enumerate(text.splitlines()):
            if re.search(r"\bmlflow (ui|server|models serve)\b", line) and not line.lstrip().startswith(("#", "-", "|")):
                block = " ".join(text.splitlines()[i:i + 3])
                assert "--host 127.0.0.1" in block, f"{name}: {line.strip()}"
        if name == "Makefile":
            assert commands, "Makefile has no mlflow ui target"
            assert any("models serve" in c for c in commands), "Makefile has no serve target"


CREDENTIAL_KEYS = re.compile(r"(secret|password|passwd|token|access_key|credential|api_key)", re.I)


def test_no_credentials_in_params_or_the_committed_dvc_config():
    def walk(node, trail=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{trail}.{key}" if trail else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{trail}[{i}]")
        else:
            yield trail, node

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    leaked = [key for key, value in walk(params) if CREDENTIAL_KEYS.search(key.split(".")[-1]) and value]
    assert leaked == [], f"credentials in params.yaml: {leaked}"
    config = (REPO / ".dvc" / "config").read_text()
    assert not [line for line in config.splitlines() if CREDENTIAL_KEYS.search(line.split("=")[0])
                and not line.lstrip().startswith("#")]
    assert "/config.local" in (REPO / ".dvc" / ".gitignore").read_text()
