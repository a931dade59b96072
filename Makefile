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

# The paper's point at CPU scale (README): Keel, Pre-LN and Post-LN at 64 sub-layers, the same
# LR 6e-3 (where Pre-LN degrades: docs/results/lr-sweep), 250 steps each, from one recipe with
# the scheme set per run. Keel and Pre-LN train side by side (one core each, logs in RUNS/),
# then Post-LN: about 8 minutes on 2 quiet cores. Loss curves, held-out perplexity and the
# gradient-flow plot follow. A rerun starts the three runs afresh.
DEMO := recipes/demo-64-sublayers.yaml
DEMO_RUNS := $(RUNS)/demo-keel $(RUNS)/demo-pre-ln $(RUNS)/demo-post-ln
demo: $(STAMP)
	$(BIN)/keelctl --version
	rm -rf $(DEMO_RUNS)
	@echo "training demo-keel and demo-pre-ln side by side (logs: $(RUNS)/demo-*.log)"
	mkdir -p $(RUNS)
	$(BIN)/keelctl train $(DEMO) --set name=demo-keel --run-dir $(RUNS)/demo-keel > $(RUNS)/demo-keel.log 2>&1 & keel=$$!; \
	$(BIN)/keelctl train $(DEMO) --set model.residual=pre_ln --set name=demo-pre-ln \
		--run-dir $(RUNS)/demo-pre-ln > $(RUNS)/demo-pre-ln.log 2>&1 & pre=$$!; \
	wait $$keel && wait $$pre
	$(BIN)/keelctl train $(DEMO) --set model.residual=post_ln --set name=demo-post-ln --run-dir $(RUNS)/demo-post-ln
	$(BIN)/keelctl compare-runs $(DEMO_RUNS) --plot $(RUNS)/demo-loss.png
	$(BIN)/keelctl eval $(DEMO_RUNS) --output $(RUNS)/demo-eval.json
	$(BIN)/keelctl plot-grads $(DEMO_RUNS) --steps 0,last --output $(RUNS)/demo-grads.png
	for run in $(DEMO_RUNS); do echo "--- sample from $$run (docs/generate.md)"; $(BIN)/keelctl generate $$run --prompt "def " --max-new-tokens 120 --seed 0 --device cpu || exit 1; done
	@echo "demo outputs: $(RUNS)/ (demo-loss.png, demo-eval.json, demo-grads.png, demo-grads-heatmap.png)"

bench: $(STAMP)
	$(BIN)/keelctl bench --output $(RUNS)/bench.json

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
