"""versions: dataset versions from git history, linked both ways to the MLflow models trained on them.

A dataset version is a commit that changed a task's data hashes in dvc.lock. Paths are never written
here: every output path and hash comes from dvc.lock at that commit, and a stage's committed metrics
(its `cache: false` outputs) give the row counts. Models are found through the `data.md5` tag that
train and register put on runs and model versions.

    python -m stages.versions list <task> [--json]        versions, hashes, row counts, model versions
    python -m stages.versions checkout <task> <rev>       restore that task's version, whatever `run` lists now
                                                          or listed then: its dvc.lock entries, committed metrics,
                                                          .dvc pointers, and its outputs from the DVC cache by md5
    python -m stages.versions model <name> <version>      the data a registered model was trained on
    python -m stages.versions verify [--remove]           recompute the md5 of every DVC cache file
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.common import PARAMS_FILE, StageError, file_md5, load_params, run_main

LOCK_FILE = "dvc.lock"
# The stages whose outputs make up a dataset version, in pipeline order (stage names, not paths).
DATA_STAGES = ("acquire", "clean", "label", "split", "augment")
# Row counts: the first of these keys found in a data stage's committed metrics JSON.
ROW_KEYS = ("rows_kept", "rows")


@dataclass(frozen=True)
class DatasetVersion:
    rev: str
    date: str
    subject: str
    tags: list[str]
    hashes: dict[str, str]  # DVC-cached output path -> md5, from dvc.lock at `rev`
    rows: dict[str, int]  # data stage -> rows it kept, from its committed metrics at `rev`
    committed: list[str]  # the stage outputs git tracks at `rev` (the metrics)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    data_md5: str
    run_id: str
    aliases: list[str]
    variant: str = "model"  # or "compressed" (register's int8 variant)


# ---------------------------------------------------------------- pure core


def task_stages(lock: dict[str, Any], task: str) -> dict[str, dict[str, Any]]:
    """`{stage: entry}` for the task's foreach entries (`stage@task`) in a parsed dvc.lock."""
    out = {}
    for key, entry in (lock.get("stages") or {}).items():
        name, _, item = key.partition("@")
        if item == task:
            out[name] = entry or {}
    return out


def task_entries(lock: dict[str, Any], task: str) -> dict[str, dict[str, Any]]:
    """`{"stage@task": entry}` of the task's entries in a parsed dvc.lock, in file order."""
    return {key: entry or {} for key, entry in (lock.get("stages") or {}).items() if key.partition("@")[2] == task}


def with_task_entries(stages: dict[str, Any], task: str, entries: dict[str, Any]) -> dict[str, Any]:
    """dvc.lock's `stages` with the task's entries replaced by `entries`; every other task's entry is kept.

    A replaced entry keeps its place (so restoring the latest version gives back the committed file), an
    entry absent from `entries` goes, and a new one is appended.
    """
    merged = {}
    for key, entry in stages.items():
        if key.partition("@")[2] != task:
            merged[key] = entry
        elif key in entries:
            merged[key] = entries[key]
    for key, entry in entries.items():
        merged.setdefault(key, entry)
    return merged


def leaves(key: str, value: Any) -> dict[str, Any]:
    """`{dotted key: value}` of the scalars and lists under a params key (a stage may depend on a whole section)."""
    if isinstance(value, dict) and value:
        return {k: v for sub, item in value.items() for k, v in leaves(f"{key}.{sub}", item).items()}
    return {key: value}


def changed_params(entries: dict[str, dict[str, Any]], params: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`{dotted key: (then, now)}` for each params.yaml value the entries recorded that differs in `params` now."""
    changed = {}
    for entry in entries.values():
        for key, then in ((entry.get("params") or {}).get("params.yaml") or {}).items():
            now: Any = params
            for part in key.split("."):
                now = now.get(part) if isinstance(now, dict) else None
            old, new = leaves(key, then), leaves(key, now)
            for leaf in sorted(set(old) | set(new)):
                if old.get(leaf) != new.get(leaf):
                    changed[leaf] = (old.get(leaf), new.get(leaf))
    return changed


def pointer_outs(pointer: str, text: str) -> list[dict[str, Any]]:
    """The outs of a `.dvc` file, with `path` made relative to the repository root."""
    try:
        outs = (yaml.safe_load(text) or {}).get("outs") or []
    except yaml.YAMLError as exc:
        raise StageError(f"{pointer}: invalid YAML: {str(exc).splitlines()[0]}") from None
    base = Path(pointer).parent
    return [{**out, "path": (base / out["path"]).as_posix()} for out in outs if "path" in out]


def is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def stage_outs(lock: dict[str, Any], task: str, stages: Sequence[str]) -> dict[str, str]:
    """`{path: md5}` of every output of the given stages of `task`, in stage order."""
    entries = task_stages(lock, task)
    outs = {}
    for stage in stages:
        for out in entries.get(stage, {}).get("outs") or []:
            if "path" in out and "md5" in out:
                outs[out["path"]] = out["md5"]
    return outs


def uncached_outs(dag: dict[str, Any], task: str) -> set[str]:
    """Paths declared `cache: false` in a parsed dvc.yaml for `task`: DVC cannot restore them, so no version has them."""
    paths = set()
    for stage in (dag.get("stages") or {}).values():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind) or []:
                if isinstance(entry, dict):
                    for path, opts in entry.items():
                        if isinstance(opts, dict) and opts.get("cache") is False:
                            paths.add(path.replace("${item}", task))
    return paths


def row_counts(metrics_by_stage: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Rows each stage kept, from its metrics JSON (acquire reports `rows`, the others `rows_kept`)."""
    rows = {}
    for stage, metrics in metrics_by_stage.items():
        for key in ROW_KEYS:
            if isinstance(metrics.get(key), int):
                rows[stage] = metrics[key]
                break
    return rows


def new_versions(history: Sequence[tuple[str, dict[str, str]]]) -> list[int]:
    """Indices into an oldest-first `(rev, hashes)` history where the task's data changed."""
    keep, previous = [], None
    for i, (_, hashes) in enumerate(history):
        if hashes and hashes != previous:
            keep.append(i)
            previous = hashes
    return keep


def matching_models(version: DatasetVersion, models: Sequence[ModelVersion]) -> list[ModelVersion]:
    """The model versions whose `data.md5` is one of this dataset version's data hashes."""
    hashes = set(version.hashes.values())
    return [m for m in models if m.data_md5 in hashes]


def is_cache_object_intact(path: Path, name: str) -> bool:
    """A DVC 3 cache object is named by the md5 of its bytes (`.dir` objects too, minus the suffix)."""
    return file_md5(path) == name.removesuffix(".dir")


# ---------------------------------------------------------------- git and DVC


def git(*args: str, check: bool = True) -> str:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True)
    except OSError as exc:
        raise StageError(f"git: {exc}") from None
    if check and result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["failed"]
        raise StageError(f"git {' '.join(args)}: {lines[0]}")
    return result.stdout


def lock_at(rev: str) -> dict[str, Any]:
    try:
        return yaml.safe_load(git("show", f"{rev}:{LOCK_FILE}")) or {}
    except yaml.YAMLError as exc:
        raise StageError(f"{rev}:{LOCK_FILE}: invalid YAML: {str(exc).splitlines()[0]}") from None


def tracked_at(rev: str, paths: Sequence[str]) -> list[str]:
    """The subset of `paths` that git tracks at `rev`: a stage's `cache: false` outputs."""
    if not paths:
        return []
    listed = set(git("ls-tree", "-r", "--name-only", rev, "--", *paths).splitlines())
    return [p for p in paths if p in listed]


def json_at(rev: str, path: str) -> dict[str, Any]:
    try:
        value = json.loads(git("show", f"{rev}:{path}"))
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def dag_at(rev: str) -> dict[str, Any]:
    try:
        return yaml.safe_load(git("show", f"{rev}:dvc.yaml", check=False) or "{}") or {}
    except yaml.YAMLError:
        return {}


def dataset_version(rev: str, lock: dict[str, Any], task: str) -> DatasetVersion:
    outs = stage_outs(lock, task, DATA_STAGES)
    committed = tracked_at(rev, list(outs))
    uncached = uncached_outs(dag_at(rev), task)
    metrics = {}
    for stage in DATA_STAGES:
        for path in stage_outs(lock, task, [stage]):
            if path in committed and path.endswith(".json"):
                metrics[stage] = json_at(rev, path)
    date, subject = git("log", "-1", "--format=%cI%x09%s", rev).rstrip("\n").split("\t", 1)
    tags = git("tag", "--points-at", rev).split()
    all_committed = tracked_at(rev, list(stage_outs(lock, task, list(task_stages(lock, task)))))
    return DatasetVersion(rev=rev, date=date, subject=subject, tags=tags,
                          hashes={p: h for p, h in outs.items() if p not in committed and p not in uncached},
                          rows=row_counts(metrics), committed=all_committed)


def history(task: str) -> list[DatasetVersion]:
    """Dataset versions of `task`, oldest first: the commits of dvc.lock where its data hashes changed."""
    revs = git("log", "--reverse", "--format=%H", "--", LOCK_FILE).split()
    locks = [(rev, lock_at(rev)) for rev in revs]
    seen = []
    for rev, lock in locks:
        uncached = uncached_outs(dag_at(rev), task)  # a local feature cache changing is no new dataset version
        seen.append((rev, {p: h for p, h in stage_outs(lock, task, DATA_STAGES).items() if p not in uncached}))
    return [dataset_version(locks[i][0], locks[i][1], task) for i in new_versions(seen)]


# ---------------------------------------------------------------- MLflow


def tracking_client() -> Any | None:
    """An MlflowClient on the pipeline's store, or None when a local SQLite store does not exist yet."""
    from mlflow import MlflowClient

    from stages import tracking

    params = load_params()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params["base"]["tracking_uri"]
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None  # opening it would create an empty store: no models were ever registered here
    tracking.configure(params)
    return MlflowClient()


def _mlflow_error(exc: Exception) -> StageError:
    import mlflow

    text = str(exc).splitlines()[0] if str(exc) else ""
    return StageError(f"MLflow store {mlflow.get_tracking_uri()}: {type(exc).__name__}: {text}")


def models_for(hashes: set[str]) -> list[ModelVersion]:
    """Registered model versions tagged with any of `hashes` as their `data.md5`."""
    client = tracking_client()
    if client is None or not hashes:
        return []
    found = []
    try:
        for md5 in sorted(hashes):
            for mv in client.search_model_versions(f"tags.`data.md5` = '{md5}'"):
                # search results leave aliases out; the single-version lookup has them
                aliases = client.get_model_version(mv.name, mv.version).aliases or []
                found.append(ModelVersion(name=mv.name, version=str(mv.version), data_md5=md5, run_id=mv.run_id,
                                          aliases=sorted(aliases), variant=mv.tags.get("variant", "model")))
    except Exception as exc:  # sqlite locked, unreachable server, ...
        raise _mlflow_error(exc) from None
    return sorted(found, key=lambda m: (m.name, int(m.version)))


# ---------------------------------------------------------------- commands


def cmd_list(task: str, *, as_json: bool) -> None:
    versions = history(task)
    models = models_for({h for v in versions for h in v.hashes.values()})
    current = None
    if Path(LOCK_FILE).is_file():
        current = stage_outs(yaml.safe_load(Path(LOCK_FILE).read_text()) or {}, task, DATA_STAGES)
    rows = []
    for v in versions:
        rows.append({**asdict(v), "current": current is not None and {p: h for p, h in current.items() if p in
                                                                          v.hashes} == v.hashes,
                     "models": [asdict(m) for m in matching_models(v, models)]})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"{task}: no dataset version in the git history of {LOCK_FILE} (commit it after dvc repro)")
    for n, row in enumerate(rows, start=1):
        mark = " (workspace)" if row["current"] else ""
        tags = f" [{', '.join(row['tags'])}]" if row["tags"] else ""
        print(f"v{n} {row['rev'][:10]} {row['date']}{tags}{mark}  {row['subject']}")
        for path, md5 in row["hashes"].items():
            print(f"    {md5}  {path}")
        print("    rows: " + ", ".join(f"{stage} {count}" for stage, count in row["rows"].items()))
        models_text = ", ".join(f"{m['name']} v{m['version']}"
                                + (f" ({m['variant']})" if m["variant"] != "model" else "")
                                + (f" @{','.join(m['aliases'])}" if m["aliases"] else "")
                                for m in row["models"])
        print(f"    models: {models_text or 'none registered'}")


def task_pointers(commit: str, entries: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """`{.dvc file: outs}` at `commit` for the `dvc add`-ed inputs the task's stages depend on (source, annotations)."""
    deps = {dep["path"] for entry in entries.values() for dep in entry.get("deps") or [] if "path" in dep}
    found = {}
    for pointer in git("ls-tree", "-r", "--name-only", commit).splitlines():
        if pointer.endswith(".dvc"):
            outs = pointer_outs(pointer, git("show", f"{commit}:{pointer}"))
            if any(is_within(out["path"], dep) or is_within(dep, out["path"]) for out in outs for dep in deps):
                found[pointer] = outs
    return found


def _hash_info(out: dict[str, Any]) -> Any:
    from dvc_data.hashfile.hash_info import HashInfo

    # an entry written by DVC 2 has no `hash: md5` and its object lives in the legacy cache
    return HashInfo("md5" if out.get("hash") == "md5" else "md5-dos2unix", out["md5"])


def _odb(repo: Any, hash_info: Any) -> Any:
    return repo.cache.local if hash_info.name == "md5" else repo.cache.legacy


def missing_objects(repo: Any, hash_infos: set[Any]) -> set[Any]:
    """The hashes whose object, or for a directory its manifest or any file in it, is not in the local cache."""
    from dvc_data.hashfile.tree import Tree

    missing = set()
    for hash_info in hash_infos:
        odb = _odb(repo, hash_info)
        if not odb.exists(hash_info.value):
            missing.add(hash_info)
        elif hash_info.isdir and not all(odb.exists(entry.value) for _, _, entry in Tree.load(odb, hash_info)):
            missing.add(hash_info)
    return missing


def fetch_missing(repo: Any, outs: list[dict[str, Any]], where: str) -> None:
    """Bring the objects of `outs` into the local cache from the default remote; one line when one is in neither."""
    missing = missing_objects(repo, {_hash_info(out) for out in outs})
    reason = "nor on the default remote"
    if missing:
        dvc_logger = logging.getLogger("dvc")
        level = dvc_logger.level
        dvc_logger.setLevel(logging.ERROR)  # DVC's multi-line warning listing the missing files: the error says it
        try:
            repo.cloud.pull(missing)
        except Exception as exc:  # no remote configured, unreachable, ...
            reason = f"and the remote failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            dvc_logger.setLevel(level)
        missing = missing_objects(repo, missing)
    if missing:
        out = next(out for out in outs if _hash_info(out) in missing)
        raise StageError(f"{out['path']} ({out['md5']}) of {where}: not in the DVC cache {reason} "
                         "(dvc push it where it was built, or dvc pull -r <remote that has it>)")


def restore_out(repo: Any, out: dict[str, Any]) -> None:
    """Write one output from the DVC cache, as `dvc checkout` does, without needing a stage in dvc.yaml for it."""
    from dvc_data.hashfile import load
    from dvc_data.hashfile.checkout import CheckoutError, LinkError, PromptError, checkout

    hash_info = _hash_info(out)
    odb = _odb(repo, hash_info)
    path = os.path.abspath(out["path"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        checkout(path, repo.fs, load(odb, hash_info), odb, state=repo.state)
    except PromptError:
        raise StageError(f"{out['path']}: changed in the workspace and not in the DVC cache; dvc commit or "
                         "delete it first") from None
    except (CheckoutError, LinkError) as exc:
        raise StageError(f"{out['path']}: dvc checkout failed: {type(exc).__name__}: {exc}") from None


def write_task_entries(task: str, entries: dict[str, Any], schema: str) -> None:
    """Put the task's entries into dvc.lock with DVC's own YAML writer; other tasks' entries stay as they are."""
    from dvc.utils.serialize import dump_yaml, modify_yaml

    if not Path(LOCK_FILE).is_file():
        dump_yaml(LOCK_FILE, {"schema": schema, "stages": entries})
        return
    with modify_yaml(LOCK_FILE) as data:
        data["stages"] = with_task_entries(data.get("stages") or {}, task, entries)


def cmd_checkout(task: str, rev: str, *, as_json: bool) -> None:
    from dvc.repo import Repo
    from dvc.utils.serialize import loads_yaml

    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).strip()
    if not commit:
        raise StageError(f"{rev}: not a git revision")
    lock = lock_at(commit)
    entries = task_entries(lock, task)
    if not entries:
        raise StageError(f"{task}: no dataset version at {commit[:10]}: its {LOCK_FILE} has no stage of that task "
                         f"(python -m stages.versions list {task})")
    version = dataset_version(commit, lock, task)
    # what a version is: the task's entries in dvc.lock, their outputs (git-tracked metrics from git, the rest
    # from the DVC cache by md5) and the .dvc pointers of the inputs they read. Nothing is looked up in the
    # current dvc.yaml, whose `foreach: ${run}` need not generate these stages any more; params.yaml stays.
    outs = [out for entry in entries.values() for out in entry.get("outs") or [] if "path" in out and "md5" in out]
    committed = tracked_at(commit, [out["path"] for out in outs])
    uncached = uncached_outs(dag_at(commit), task)
    pointers = task_pointers(commit, entries)
    cached = [out for out in outs if out["path"] not in committed and out["path"] not in uncached]
    cached += [out for pointed in pointers.values() for out in pointed if "md5" in out]
    try:
        repo = Repo(".")
    except Exception as exc:
        raise StageError(f"not a DVC repository: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    with repo, repo.lock:
        fetch_missing(repo, cached, f"{task} at {commit[:10]}")  # before anything is written
        if committed or pointers:
            git("checkout", commit, "--", *committed, *pointers)
        for out in cached:
            restore_out(repo, out)
        # DVC's own YAML reading (1.2: `1e-06` is a number), so entries are written back and compared as DVC sees them
        raw = loads_yaml(git("show", f"{commit}:{LOCK_FILE}"), typ="rt") or {}
        restored = {key: raw["stages"][key] for key in entries}
        write_task_entries(task, restored, str(raw.get("schema", "2.0")))
    params = changed_params(restored, load_params()) if Path(PARAMS_FILE).is_file() else {}
    models = matching_models(version, models_for(set(version.hashes.values())))
    if as_json:
        print(json.dumps({**asdict(version), "models": [asdict(m) for m in models],
                          "params_changed": {k: {"then": a, "now": b} for k, (a, b) in params.items()}}, indent=2))
        return
    print(f"{task}: checked out dataset version {commit[:10]} ({version.subject})")
    for path, md5 in version.hashes.items():
        print(f"    {md5}  {path}")
    for m in models:
        print(f"    trained on it: {m.name} v{m.version}" + (f" @{','.join(m.aliases)}" if m.aliases else ""))
    if not models:
        print("    trained on it: no registered model version")
    if params:
        print(f"{PARAMS_FILE} stays as it is; it differs from that version in "
              + ", ".join(f"{key} ({then!r} then, {now!r} now)" for key, (then, now) in params.items())
              + ": dvc repro would rebuild from the current values")
    print(f"back to the latest: python -m stages.versions checkout {task} HEAD")


def cmd_model(name: str, version: str, *, as_json: bool) -> None:
    client = tracking_client()
    if client is None:
        raise StageError(f"{load_params()['base']['tracking_uri']}: MLflow store not found")
    try:
        mv = client.get_model_version(name, version)
        run = client.get_run(mv.run_id)
    except Exception as exc:
        raise _mlflow_error(exc) from None
    data_md5 = mv.tags.get("data.md5") or run.data.tags.get("data.md5")
    task = mv.tags.get("task") or run.data.tags.get("task")
    if not data_md5 or not task:
        raise StageError(f"model {name} v{version}: no data.md5/task tag (registered before lineage tags existed)")
    upstream = {k: v for k, v in sorted(run.data.tags.items()) if k.startswith("dvc.")}
    match = next((v for v in history(task) if data_md5 in v.hashes.values()), None)
    info = {"name": name, "version": str(version), "task": task, "data_md5": data_md5, "run_id": mv.run_id,
            "git_commit_at_training": run.data.tags.get("git.commit"), "upstream_hashes": upstream,
            "rev": match.rev if match else None, "hashes": match.hashes if match else {},
            "restore": f"python -m stages.versions checkout {task} {match.rev}" if match else None}
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{name} v{version}: task {task}, trained on data.md5 {data_md5} (run {mv.run_id})")
        for key, md5 in upstream.items():
            print(f"    {md5}  {key}")
        if match:
            print(f"dataset version: {match.rev} ({match.subject})")
            print(f"restore it: {info['restore']}")
    if not match:
        raise StageError(f"model {name} v{version}: data.md5 {data_md5} is in no committed {LOCK_FILE} "
                         "(commit dvc.lock after dvc repro)")


def cmd_verify(*, remove: bool) -> int:
    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            root = Path(repo.cache.local.path)
    except Exception as exc:
        raise StageError(f"not a DVC repository: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    checked, bad = 0, []
    for path in sorted(root.glob("??/*")) if root.is_dir() else []:
        if not path.is_file() or path.name.endswith(".tmp") or len(path.parent.name) != 2:
            continue
        checked += 1
        if not is_cache_object_intact(path, path.parent.name + path.name):
            bad.append(path)
    for path in bad:
        print(f"corrupted: {path} (md5 {file_md5(path)} != {path.parent.name + path.name.removesuffix('.dir')})")
        if remove:
            path.chmod(0o644)
            path.unlink()
    if bad:
        refetch = "python -m stages.versions verify --remove && dvc pull"
        action = "removed; restore them with: dvc pull" if remove else f"remove them and refetch: {refetch}"
        print(f"verify: {len(bad)} of {checked} cache files corrupted; {action}", file=sys.stderr)
        return 1
    print(f"verify: {checked} cache files intact in {root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="dataset versions of a task, with hashes, row counts and models")
    p_list.add_argument("task")
    p_checkout = sub.add_parser("checkout", help="restore a task's dataset version: its dvc.lock entries, metrics, "
                                                 ".dvc pointers and cached outputs")
    p_checkout.add_argument("task")
    p_checkout.add_argument("rev")
    p_model = sub.add_parser("model", help="the git revision and data hashes a registered model was trained on")
    p_model.add_argument("name")
    p_model.add_argument("version")
    p_verify = sub.add_parser("verify", help="recompute the md5 of every file in the DVC cache")
    p_verify.add_argument("--remove", action="store_true", help="delete corrupted cache files (then: dvc pull)")
    for p in (p_list, p_checkout, p_model):
        p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    if args.command == "list":
        cmd_list(args.task, as_json=args.json)
    elif args.command == "checkout":
        cmd_checkout(args.task, args.rev, as_json=args.json)
    elif args.command == "model":
        cmd_model(args.name, args.version, as_json=args.json)
    else:
        return cmd_verify(remove=args.remove)
    return 0


if __name__ == "__main__":
    run_main(main)
