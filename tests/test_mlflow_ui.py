"""The MLflow UI, checked in a real browser: a user who opens the experiment lands on the study's parent run and
its trial runs (not MLflow 3's GenAI overview), and their metrics show up.

Builds a tiny pipeline (spam only, up to train) in a temp copy, starts `mlflow ui` on 127.0.0.1 against the
SQLite store it filled, and drives Debian's headless Chromium with Playwright. The screenshot is kept under the
pytest tmp dir and copied to `$TEST_ARTIFACTS_DIR` (default: `<tmp>/finetune-dataops-artifacts`); the test
prints where.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.pipeline_utils import copy_repo, dvc, edit_params, env, run, tiny_profile

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TASK = "spam"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Chromium is not installed (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A temp repo whose mlflow.db holds one tiny study (parent run plus nested trial runs)."""
    repo = copy_repo(tmp_path_factory.mktemp("ui") / "repo")

    def spam_only(params: dict) -> None:
        tiny_profile(params)
        params["run"] = [TASK]

    edit_params(repo, spam_only)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny profile"], repo)
    dvc(["repro", f"train@{TASK}"], repo)
    return repo


@pytest.fixture(scope="module")
def ui_url(store):
    """`mlflow ui` on a free loopback port against the filled store; stopped after the module."""
    port = free_port()
    log = (store / "mlflow-ui.log").open("w")
    server_env = {**env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--workers", "1", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"],
        cwd=store, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow ui did not come up:\n{(store / 'mlflow-ui.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def study_runs(repo: Path) -> tuple[str, str, str, list[str], str]:
    """From the store itself: experiment id and name, parent run name, trial run names, the per-epoch metric."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    summary = json.loads((repo / "models" / TASK / "training.json").read_text())
    parent = client.get_run(summary["run_id"])
    experiment = client.get_experiment(parent.info.experiment_id)
    # the experiment's kind (MLflow 3 reads and sets this tag in its UI): model training, not GenAI
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development", experiment.tags
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert children, "the study has no nested trial runs in the store"
    trial_metrics = set().union(*(c.data.metrics for c in children))
    per_epoch = sorted(k for k in trial_metrics if k.startswith("val_")) or sorted(trial_metrics)
    return (parent.info.experiment_id, experiment.name, parent.info.run_name,
            sorted(c.info.run_name for c in children), per_epoch[0])


def test_experiment_page_shows_study_trials_and_metrics(store, ui_url, tmp_path, capsys):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    experiment_id, experiment_name, parent_name, trial_names, metric = study_runs(store)

    with sync_api.sync_playwright() as playwright:
        # a persistent context gives a fresh, throwaway profile; executable_path means Playwright never fetches a browser
        context = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=tmp_path, prefix="chromium-profile-"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 1000})
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            # as a user gets there (README, MLflow): the experiment list, the sidebar switch on "Model training"
            # (MLflow 3.17 opens every experiment on the GenAI overview, traces and tokens, until it is; the
            # browser remembers it), then a click on the experiment
            page.goto(f"{ui_url}/#/experiments")
            page.get_by_text("Model training", exact=True).first.click()
            page.get_by_role("link", name=experiment_name, exact=True).click()
            page.wait_for_url(f"**/experiments/{experiment_id}**")
            page.get_by_text(parent_name, exact=True).wait_for()
            landing = page.url
            assistant = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
            if assistant.count():
                assistant.first.click()

            # trial runs are nested under the parent: expand it
            page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
            for name in trial_names:
                page.get_by_text(name, exact=True).first.wait_for()
            table_shot = tmp_path / "mlflow-ui-runs.png"
            page.screenshot(path=str(table_shot))

            # the chart view draws one chart per metric, over the parent and its trials
            page.locator("label", has=page.locator('input[value="CHART"]')).click()
            page.get_by_placeholder("Search metric charts").fill(metric)
            page.get_by_text(metric, exact=True).first.wait_for()
            # per-epoch charts fetch metric history after they mount; the UI polls, so there is no network idle
            page.wait_for_timeout(3000)
            chart_shot = tmp_path / "mlflow-ui-charts.png"
            page.screenshot(path=str(chart_shot))
            body = page.inner_text("body")
        finally:
            context.close()

    assert "/runs" in landing and "overview" not in landing, f"landed on {landing}, not the training runs"
    for name in [parent_name, *trial_names, metric]:
        assert name in body, f"{name!r} not on the page"
    assert table_shot.stat().st_size > 10_000 and chart_shot.stat().st_size > 10_000

    artifacts = Path(os.environ.get("TEST_ARTIFACTS_DIR") or Path(tempfile.gettempdir()) / "finetune-dataops-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    kept = [shutil.copy2(shot, artifacts / shot.name) for shot in (table_shot, chart_shot)]
    with capsys.disabled():
        print(f"\nMLflow UI screenshots: {', '.join(str(p) for p in kept)}")
