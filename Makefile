# Two commands on a fresh machine (each builds the environment it needs):
#   make demo   PackNet on the offline four-task sequence; prints the accuracy table
#   make test   the test suite (notebooks and the browser test included)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The torch build this project is tested with (on this workplace it installs from local disk).
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lab slides env env-dev clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PY) -m pip install -q -e '.[notebooks,dev]'
	$(PY) -m ipykernel install --sys-prefix --name packnet_edu --display-name "Python (packnet_edu)" >/dev/null
	@touch $@

env: $(VENV)/.core
	@bash scripts/system_deps.sh data

env-dev: $(VENV)/.dev
	@bash scripts/system_deps.sh data browser

demo: env
	$(PY) -m packnet_edu run --out runs/demo --overwrite

test: env-dev
	$(PY) -m pytest -q

lab: env-dev
	$(VENV)/bin/jupyter lab notebooks/

# Each notebook executed in full mode: build/slides/*.slides.html (reveal.js), build/html/*.html
slides: env-dev
	$(PY) scripts/make_slides.py

clean:
	rm -rf $(VENV) runs cache
