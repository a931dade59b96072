# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# constraints.txt pins torch==2.13.0 (the CPU build on this machine's disk) for this venv only.
PIP := $(BIN)/pip install -q -c constraints.txt
STAMP := $(VENV)/.installed
# The demo needs keelctl and its dependencies only; `make install` / `make test` add the extras.
DEMO_STAMP := $(VENV)/.installed-core
RUNS ?= runs
# One intra-op thread: the demo models are tiny, and on a busy 2-core machine two OpenMP
# threads made them 20-40x slower (spin-waiting). Override: make demo OMP_NUM_THREADS=2.
export OMP_NUM_THREADS ?= 1

.PHONY: install test demo lint bench clean

$(DEMO_STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(PIP) -e '.[dev,hf,wandb,mlflow]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check keelctl tests
	$(BIN)/ruff format --check keelctl tests

# The paper's point at CPU scale (README): Keel, Pre-LN and Post-LN at 64 sub-layers, the same
# LR 6e-3 (where Pre-LN degrades: docs/results/lr-sweep), 125 steps each, from one recipe with
# the scheme set per run. The three train at once (one thread each, logs in RUNS/): on 2 cores
# that ends sooner than two then one, which leaves a core idle. The Keel run also scores 50 items
# of keel_nextline every 25 steps (the recipe's trainer.eval_*: one in-training evaluation curve,
# about 11 CPU-s on top of its 142); the other two leave it out (DEMO_NO_EVAL) to keep the demo
# near 8 minutes. Then, also all at once (their output shown in order after): loss and eval
# curves, the gradient-flow plot and a sample per run.
# `keelctl eval` is left out (printed at the end): it scores the whole held-out split (245k
# tokens, about 4 CPU-minutes for the three) while compare-runs already shows each run's
# validation loss. Timed from a fresh clone in the README.
# A rerun starts the three runs afresh.
DEMO := recipes/demo-64-sublayers.yaml
DEMO_SCHEMES := keel pre_ln post_ln
DEMO_RUNS := $(RUNS)/demo-keel $(RUNS)/demo-pre-ln $(RUNS)/demo-post-ln
DEMO_NO_EVAL := --set trainer.eval_every=null --set trainer.eval_tasks=[]
KEELCTL := $(BIN)/keelctl
# Waits for every process started in the recipe line (pids in $$pids); if one fails, stops the
# others and shows the logs' ends.
WAIT_ALL = for pid in $$pids; do wait $$pid || { kill $$pids 2>/dev/null; \
	tail -n 5 $(RUNS)/demo-*.log; exit 1; }; done
demo: $(DEMO_STAMP)
	$(KEELCTL) --version
	rm -rf $(DEMO_RUNS)
	mkdir -p $(RUNS)
	@echo "training $(DEMO_SCHEMES) at once, 64 sub-layers each (logs: $(RUNS)/demo-*.log)"
	pids=; for scheme in $(DEMO_SCHEMES); do run=$(RUNS)/demo-$$(echo $$scheme | tr _ -); \
		$(KEELCTL) train $(DEMO) --set model.residual=$$scheme --set name=$$(basename $$run) \
			$$(test $$scheme = keel || echo "$(DEMO_NO_EVAL)") \
			--run-dir $$run > $$run.log 2>&1 & pids="$$pids $$!"; done; $(WAIT_ALL)
	pids=; \
	$(KEELCTL) compare-runs $(DEMO_RUNS) --plot $(RUNS)/demo-loss.png > $(RUNS)/demo-compare.log 2>&1 & \
		pids="$$pids $$!"; \
	$(KEELCTL) plot-grads $(DEMO_RUNS) --steps 0,last --output $(RUNS)/demo-grads.png \
		> $(RUNS)/demo-grads.log 2>&1 & pids="$$pids $$!"; \
	for run in $(DEMO_RUNS); do \
		$(KEELCTL) generate $$run --prompt "def " --max-new-tokens 120 --seed 0 --device cpu \
			> $$run-sample.log 2>&1 & pids="$$pids $$!"; done; $(WAIT_ALL)
	@cat $(RUNS)/demo-compare.log $(RUNS)/demo-grads.log
	@for run in $(DEMO_RUNS); do echo "--- sample from $$run (docs/generate.md)"; cat $$run-sample.log; echo; done
	@echo "demo outputs: $(RUNS)/ (demo-loss.png: loss and in-training eval curves; demo-grads.png, demo-grads-heatmap.png)"
	@echo "held-out perplexity and bits per byte (about 4 CPU-minutes): $(KEELCTL) eval $(DEMO_RUNS)"

bench: $(STAMP)
	$(BIN)/keelctl bench --output $(RUNS)/bench.json

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache
