"""Pipeline stages: one module per `dvc.yaml` stage, each with a pure core and a thin `main`."""
