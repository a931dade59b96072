"""The names of the bundled lm-eval tasks (keelctl/eval/tasks/), importable without lm-eval:
`keelctl train` checks trainer.eval_tasks against them before step 1 without loading the
harness (issue 29: 13 MiB and 0.1-0.2 CPU-s of start-up)."""

HOPS_TAG = "keel_hops"
HOPS_TASKS = tuple(f"{HOPS_TAG}_k{k}" for k in (1, 2, 3, 4))
BUNDLED_TASKS = ("keel_stdlib_ppl", "keel_nextline", *HOPS_TASKS)
BUNDLED_TAG = "keel_offline"
