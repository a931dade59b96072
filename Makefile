# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# constraints.txt pins torch==2.13.0 (the CPU build on this machine's disk) for this venv only.
PIP := $(BIN)/pip install -q -c constraints.txt
STAMP := $(VENV)/.installed
RUNS ?= runs
export OMP_NUM_THREADS ?= 2

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check keelctl tests
	$(BIN)/ruff format --check keelctl tests

demo: $(STAMP)
	$(BIN)/keelctl --version
	$(BIN)/keelctl train recipes/tiny-keel.yaml --run-dir $(RUNS)/tiny-keel
	$(BIN)/keelctl train recipes/tiny-pre-ln.yaml --run-dir $(RUNS)/tiny-pre-ln

bench: $(STAMP)
	$(BIN)/keelctl bench --output $(RUNS)/bench.json

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
