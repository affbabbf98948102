"""A `web` task end to end: declared as the README shows, `dvc repro` fetches it from a site on 127.0.0.1 and
builds it through register; refreshing acquire sends conditional requests only, and a changed page changes
raw.parquet's hash (so DVC reruns what follows)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from tests.pipeline_utils import copy_repo, dvc, edit_params, run, stages_run, tiny_profile
from tests.web_site import Site

pytestmark = pytest.mark.slow

STAGES = ("acquire", "clean", "label", "split", "augment", "train", "evaluate", "compress", "register")


@pytest.fixture(scope="module")
def site():
    site = Site(per_topic=10).start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def built(tmp_path_factory, site):
    repo = copy_repo(tmp_path_factory.mktemp("web-pipeline") / "repo")
    source = repo / "data" / "web" / "source"
    source.mkdir(parents=True)
    (repo / "data" / "web" / "annotations").mkdir()
    (repo / "data" / "web" / "annotations" / ".gitkeep").write_text("")
    urls = [(site.base + path, label) for path, (label, _) in site.good.items()]
    urls += [(site.base + "/doc.pdf", "tech"), (site.base + "/private/a.html", "tech"), ("file:///etc/passwd", "")]
    pd.DataFrame(urls, columns=["url", "label"]).to_csv(source / "urls.csv", index=False)

    def profile(params: dict) -> None:
        tiny_profile(params)
        params["run"] = ["web"]
        params["tasks"]["web"] = {  # as in README, "Web pages"
            "modality": "text",
            "source": {"kind": "web", "file": "urls.csv", "url_column": "url", "label_column": "label",
                       "license": "CC-BY-4.0", "follow": None},
            "max_per_class": None, "labels": ["sport", "tech"], "label_map": {}, "label_rules": []}
        params["acquire"]["web"].update(rate_per_host=50.0, concurrency_per_host=2, timeout_s=5)

    edit_params(repo, profile)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "web task"], repo)
    first = dvc(["repro"], repo)
    return repo, first


def test_web_task_builds_through_register(built, site):
    repo, first = built
    assert stages_run(first.stdout) == {f"{s}@web" for s in STAGES}
    metrics = json.loads((repo / "metrics/web/acquire.json").read_text())
    assert metrics["rows"] == 20 and metrics["rows_quarantined"] == 3
    assert metrics["quarantined_by_reason"] == {"not_html": 1, "robots_disallowed": 1, "scheme_not_allowed": 1}
    assert metrics["web"]["urls_in_table"] == metrics["rows_read"] + metrics["rows_quarantined"]
    raw = pd.read_parquet(repo / "data/web/raw.parquet")
    assert {"url", "final_url", "http_status", "fetched_at", "title"} <= set(raw.columns)
    assert set(raw["license"]) == {"CC-BY-4.0"} and set(raw["http_status"]) == {200}
    quarantine = pd.read_parquet(repo / "data/web/acquire.quarantine.parquet")
    assert sorted(quarantine["quarantine_reason"]) == ["not_html", "robots_disallowed", "scheme_not_allowed"]
    registered = json.loads((repo / "models/web/registered.json").read_text())
    assert registered["name"] == "web-classifier" and registered["version"] == 1

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/web-classifier@champion")
    predicted = model.predict(pd.DataFrame({"text": ["The striker scored a late goal to win the cup final."]}))
    assert predicted["label"].iloc[0] in ("sport", "tech")


def test_refresh_sends_only_conditional_requests_and_a_changed_page_reruns_downstream(built, site):
    repo, _ = built
    lock = lambda: yaml.safe_load((repo / "dvc.lock").read_text())["stages"]  # noqa: E731
    raw_md5 = next(o["md5"] for o in lock()["acquire@web"]["outs"] if o["path"].endswith("raw.parquet"))
    before = len(site.log)
    dvc(["repro", "-f", "-s", "acquire@web"], repo)
    again = [entry for entry in site.log[before:]]
    fetched = [entry for entry in again if not entry.path.startswith(("/doc.pdf",))]
    assert fetched and all(entry.if_none_match for entry in fetched), [(e.path, e.if_none_match) for e in fetched]
    assert json.loads((repo / "metrics/web/acquire.json").read_text())["web"]["not_modified"] == len(fetched)
    # nothing changed: raw keeps its hash and nothing downstream is stale
    assert next(o["md5"] for o in lock()["acquire@web"]["outs"] if o["path"].endswith("raw.parquet")) == raw_md5
    assert "Data and pipelines are up to date" in dvc(["status"], repo).stdout
    site.revision = 1
    dvc(["repro", "-f", "-s", "acquire@web"], repo)
    assert next(o["md5"] for o in lock()["acquire@web"]["outs"] if o["path"].endswith("raw.parquet")) != raw_md5
    assert "clean@web" in dvc(["status"], repo).stdout
