# Set-up and entry points. `make quickstart` and `make test` are the only commands a fresh machine needs.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test install browser data run lint compile lock clean

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

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# Headless Chromium (Debian's package) for the review report's browser test
# (tests/components/evaluate/test_report_browser.py). Installed when missing where this user may (root with apt-get);
# elsewhere the test is skipped and says why. fonts-liberation gives the page metric-compatible sans fonts.
BROWSER_PACKAGES := chromium fonts-liberation
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(BROWSER_PACKAGES) (apt-get) for the report's browser test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES) >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES) >/dev/null; } || \
	  echo "could not install chromium: the report's browser test will be skipped"; \
	else echo "chromium is missing and this user cannot apt-get install it: the report's browser test will be skipped"; fi

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

compile: $(STAMP)
	$(BIN)/medgan compile --out medgan_pipeline.yaml

lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch==' > requirements.lock

clean:
	rm -rf runs local_outputs medgan_pipeline.yaml
