# Each target below is the whole set-up on a fresh machine: it creates or updates .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo demo-siamese demo-convgru demo-groups test lint bench install clean dashboard-screenshots

# Re-install whenever pyproject.toml changes (the stamp is older than it).
$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(INSTALLED)

install: $(INSTALLED)

demo-groups: $(INSTALLED)
	$(PY) examples/lr_table.py

DEMO_CONFIG := configs/dual_stream/synthetic.yaml
demo: $(INSTALLED)
	$(VENV)/bin/mslightning fit --config $(DEMO_CONFIG)
	$(VENV)/bin/mslightning validate --config $(DEMO_CONFIG) --ckpt_path best
	$(VENV)/bin/mslightning predict --config $(DEMO_CONFIG) --ckpt_path best

SIAMESE_CONFIG := configs/siamese/synthetic.yaml
demo-siamese: $(INSTALLED)
	$(VENV)/bin/mslightning fit --config $(SIAMESE_CONFIG)
	$(VENV)/bin/mslightning validate --config $(SIAMESE_CONFIG) --ckpt_path best
	$(VENV)/bin/mslightning predict --config $(SIAMESE_CONFIG) --ckpt_path best

CONVGRU_CONFIG := configs/convgru/synthetic.yaml
demo-convgru: $(INSTALLED)
	$(VENV)/bin/mslightning fit --config $(CONVGRU_CONFIG)
	$(VENV)/bin/mslightning validate --config $(CONVGRU_CONFIG) --ckpt_path best
	$(VENV)/bin/mslightning predict --config $(CONVGRU_CONFIG) --ckpt_path best

# Fits each family's synthetic config and photographs its TensorBoard in headless Chromium (Debian's
# chromium + chromium-driver) into docs/dashboard/<family>/; about 10 minutes.
dashboard-screenshots: $(INSTALLED)
	$(PY) examples/dashboard_docs.py

test: $(INSTALLED)
	$(PY) -m pytest -q

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(INSTALLED)
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) lightning_logs logs .pytest_cache .ruff_cache
