"""Behaviour tests of a registered champion (Made-With-ML's tests/model): they need a registry to test.

    pytest tests/model --tracking-uri sqlite:///mlflow.db --task news --task animals   # after `make run`

tests/test_pipeline.py runs them on the tiny profile's champions. Without --tracking-uri they skip.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--tracking-uri", default=None, help="the MLflow store holding the registered champions")
    parser.addoption("--task", action="append", default=None, help="a task whose champion to test (repeatable)")


def pytest_generate_tests(metafunc):
    if "task" in metafunc.fixturenames:
        tasks = metafunc.config.getoption("--task", default=None) or ["news", "animals"]
        metafunc.parametrize("task", tasks, scope="session")


@pytest.fixture(scope="session")
def tracking_uri(request) -> str:
    uri = request.config.getoption("--tracking-uri", default=None)
    if not uri:
        pytest.skip("behaviour tests need a registry: pytest tests/model --tracking-uri sqlite:///mlflow.db")
    return uri


@pytest.fixture(scope="session")
def champion(tracking_uri, task):
    """The task's `@champion` as MLflow loads it, its labels and modality, and its logged input example."""
    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(tracking_uri)
    uri = f"models:/{task}-classifier@champion"
    model = mlflow.pyfunc.load_model(uri)
    python_model = model.unwrap_python_model()
    example = Model.load(uri).load_input_example(mlflow.artifacts.download_artifacts(uri))
    return {"task": task, "model": model, "labels": list(python_model.config["labels"]),
            "column": python_model.modality.payload_column, "example": example}
