# Set-up and entry points. `make quickstart` and `make test` are the only commands a fresh machine needs.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test install data run lint compile lock clean

# The CPU torch wheel is installed first and pinned, so no dependency can pull a multi-GB CUDA build.
# requirements.lock pins every other package to the versions the project is tested with (the sample data's bytes,
# and so data.dvc, depend on pydicom/numpy/pillow); refresh it with `make lock`.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Sample DICOM data, tracked by DVC (data.dvc at the repo root) and pushed to the local remote .dvc-storage/.
data: $(STAMP)
	$(BIN)/medgan phantom --out data
	$(BIN)/dvc add data --quiet
	$(BIN)/dvc push --quiet

run: $(STAMP)
	$(BIN)/medgan run --data data --preset quickstart

quickstart: data run

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

compile: $(STAMP)
	$(BIN)/medgan compile --out medgan_pipeline.yaml

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' > requirements.lock

clean:
	rm -rf runs local_outputs medgan_pipeline.yaml
