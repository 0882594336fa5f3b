# The two commands a newcomer needs: `make demo` and `make test`. Both build the venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

# setup.py and the C source too: the install compiles the optional bbolt walker
$(STAMP): pyproject.toml setup.py etcd_backupd/snapshot/_walker.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(VENV)/bin/ruff check etcd_backupd tests benchmarks scripts
	$(VENV)/bin/ruff format --check etcd_backupd tests benchmarks scripts
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check etcd_backupd tests benchmarks scripts
	$(VENV)/bin/ruff format --check etcd_backupd tests benchmarks scripts
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/snapshot_bench.py

clean:
	rm -rf $(VENV) demo-backups .demo
