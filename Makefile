# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# constraints.txt pins torch==2.13.0 (the CPU build on this machine's disk) for this venv only.
PIP := $(BIN)/pip install -q -c constraints.txt
STAMP := $(VENV)/.installed
RUNS ?= runs
# One intra-op thread: the demo models are tiny, and on a busy 2-core machine two OpenMP
# threads made them 20-40x slower (spin-waiting). Override: make demo OMP_NUM_THREADS=2.
export OMP_NUM_THREADS ?= 1

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,hf,wandb,mlflow]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check keelctl tests
	$(BIN)/ruff format --check keelctl tests

# Trains tiny Keel and tiny Pre-LN (about 2 minutes each), compares them and redraws the loss
# curves shown in docs/train.md. A rerun starts the two demo runs afresh.
# One thread per run: tiny models are faster on one thread than on two busy cores.
demo: $(STAMP)
	$(BIN)/keelctl --version
	rm -rf $(RUNS)/tiny-keel $(RUNS)/tiny-pre-ln
	$(BIN)/keelctl train recipes/tiny-keel.yaml --run-dir $(RUNS)/tiny-keel
	$(BIN)/keelctl train recipes/tiny-pre-ln.yaml --run-dir $(RUNS)/tiny-pre-ln
	$(BIN)/keelctl compare-runs $(RUNS)/tiny-keel $(RUNS)/tiny-pre-ln --plot $(RUNS)/train-loss.png
	$(BIN)/keelctl eval $(RUNS)/tiny-keel $(RUNS)/tiny-pre-ln --tasks keel_offline --limit 100 --output $(RUNS)/eval.json
	$(BIN)/keelctl ablate-layers $(RUNS)/tiny-keel $(RUNS)/tiny-pre-ln --tokens 32768 --device cpu --output-dir $(RUNS)/ablation-tiny
	$(BIN)/keelctl plot-grads $(RUNS)/tiny-keel $(RUNS)/tiny-pre-ln --output $(RUNS)/grads.png
	@echo "demo outputs: $(RUNS)/ (train-loss.png, eval.json, ablation-tiny/, grads.png)"

bench: $(STAMP)
	$(BIN)/keelctl bench --output $(RUNS)/bench.json

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
