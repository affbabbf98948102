"""Stage dependencies that cannot drift: every stage in dvc.yaml declares the code and the inputs it reads.

For each stage DVC resolves from dvc.yaml (templating and `foreach` included), the project modules its
`python -m stages.X` command imports, transitively and found by AST, and every path its command line passes
that is not one of its outputs, must each be one of its `deps` or inside a dep that is a folder. Otherwise
editing that module or input would not rerun the stage, and `dvc repro` would report stale results as up
to date. Nothing here lists modules by hand: new stages and modules are checked as they appear.

A second test keeps the layers: a building block (a module no stage runs and with no `__main__`) never
imports a stage.
"""

from __future__ import annotations

import ast
import shlex
from functools import cache
from pathlib import Path, PurePosixPath

import pytest

from tests.pipeline_utils import REPO

PACKAGE = "stages"
# Passed on a command line but outside DVC on purpose: a local cache, not data (see README, Labelling).
NOT_INPUTS = (".cache/",)


def module_file(name: str) -> Path | None:
    """The file of project module `name` (`stages.x.y`), or None if it is not one."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = REPO.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def has_code(path: Path) -> bool:
    """False for a module that holds nothing but a docstring (an empty package marker)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def direct_imports(path: Path) -> set[str]:
    """Project modules `path` imports anywhere in its body (lazy imports in functions too).

    Counted: `import a.b`, `from a import b` (b a module or a name in a), relative imports, and any string
    constant that names a project module (what `importlib.import_module` is given).
    """
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(f"{PACKAGE}."):
            found.add(node.value)
    return {name for name in found if module_file(name)}


@cache
def imported_files(module: str) -> frozenset[Path]:
    """The files of `module` and of every project module it imports, transitively, with their packages."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]))
            if path and path not in seen:
                seen.add(path)
                todo.extend(direct_imports(path))
    return frozenset(p for p in seen if has_code(p))


def covered(path: str, deps: list[str]) -> bool:
    """True if `path` is a dep or lies inside a dep (a folder dep covers what is in it)."""
    target = PurePosixPath(path)
    return any(target == PurePosixPath(dep) or PurePosixPath(dep) in target.parents for dep in deps)


def command_paths(argv: list[str]) -> list[str]:
    """Arguments that name a file or folder of the project (they contain a slash and are not options)."""
    return [arg for arg in argv if "/" in arg and not arg.startswith("-") and "://" not in arg]


@cache
def resolved_stages() -> list[tuple[str, str, list[str], list[str]]]:
    """`(name, cmd, deps, outs)` for each stage, as DVC itself resolves dvc.yaml against params.yaml."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return [(stage.addressing, stage.cmd, [str(d.def_path) for d in stage.deps],
                 [str(o.def_path) for o in stage.outs]) for stage in repo.index.stages if stage.cmd]


def missing_deps(name: str, cmd: str, deps: list[str], outs: list[str]) -> list[str]:
    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "-m"], f"{name}: command is not `python -m <module>`: {cmd}"
    module = argv[2]
    assert module_file(module), f"{name}: {module} is not a project module"
    missing = [str(p.relative_to(REPO)) for p in sorted(imported_files(module))]
    missing = [p for p in missing if not covered(p, deps)]
    for path in command_paths(argv[3:]):
        if path in outs or path.startswith(NOT_INPUTS):
            continue
        if not covered(path, deps):
            missing.append(path)
    return missing


def test_dvc_yaml_resolves_to_stages():
    names = {name.partition("@")[0] for name, *_ in resolved_stages()}
    assert {"acquire", "train", "register"} <= names, names


def test_every_stage_declares_the_code_it_imports_and_the_inputs_it_is_given():
    problems = []
    for name, cmd, deps, outs in resolved_stages():
        missing = missing_deps(name, cmd, deps, outs)
        if missing:
            problems.append(f"{name}: not in deps: {', '.join(missing)}")
    assert not problems, "dvc.yaml stages read more than they declare:\n" + "\n".join(problems)


def test_the_import_walk_follows_lazy_and_package_imports():
    files = {str(p.relative_to(REPO)) for p in imported_files("stages.train")}
    # train imports the registry, which imports the built-in modalities by name (strings, not import statements)
    assert {"stages/train.py", "stages/common.py", "stages/modalities/__init__.py",
            "stages/modalities/text.py"} <= files
    assert "stages/__init__.py" not in files  # a docstring only: cannot change a result


def stage_modules() -> set[str]:
    return {shlex.split(cmd)[2] for _, cmd, _, _ in resolved_stages()}


def building_blocks() -> list[Path]:
    """Project modules no stage runs and that are not tools (a tool has its own `__main__`)."""
    stages = stage_modules()
    blocks = []
    for path in sorted(REPO.joinpath(PACKAGE).rglob("*.py")):
        if module_name(path) in stages or '__name__ == "__main__"' in path.read_text():
            continue
        blocks.append(path)
    return blocks


def test_no_building_block_imports_a_stage():
    stages = stage_modules()
    blocks = building_blocks()
    assert any(p.name == "tracking.py" for p in blocks)
    offenders = [f"{p.relative_to(REPO)} imports {sorted(direct_imports(p) & stages)}"
                 for p in blocks if direct_imports(p) & stages]
    assert not offenders, "a building block reaches up into a stage (move what it needs down):\n" + "\n".join(offenders)


@pytest.mark.parametrize("path,deps,expected", [
    ("stages/modalities/text.py", ["stages/modalities"], True),
    ("stages/modalities/text.py", ["stages/modal"], False),
    ("data/x/raw.parquet", ["data/x/raw.parquet"], True),
    ("data/x", ["data/x/raw.parquet"], False),
])
def test_a_folder_dep_covers_what_is_inside_it(path, deps, expected):
    assert covered(path, deps) is expected
