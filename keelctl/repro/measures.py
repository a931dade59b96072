"""Per-run measurements that need a run's weights, taken once right after training and kept in
the run's compact record (records.py) as NAME.json, so no analysis needs the weights again.

eval      `keelctl eval`'s held-out perplexity over the run's whole validation split, and the
          scale's bundled lm-eval tasks (keel_nextline: accuracy).
ablation  `ablate-layers` on the scale's first ablation_tokens validation tokens: every single
          sub-layer, every block, and ranges of L/4 sub-layers starting every L/8; and each
          sub-layer's relative step |x' - x| / |x| on the residual stream (mean over tokens),
          the size of the change that removing it undoes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from keelctl.repro.plan import RunSpec
from keelctl.repro.scales import Scale
from keelctl.runs import Run

Measure = Callable[[RunSpec], dict]  # a measurement that needs the run's weights
ROW_KEYS = ("layer", "kind", "removed", "rel_dppl", "dppl", "dloss")


def _diverged(spec: RunSpec) -> bool:
    return Run(spec.run_dir).summary().get("status") == "diverged"


def evaluate(spec: RunSpec, scale: Scale) -> dict:
    from keelctl.eval.runner import evaluate_runs

    if _diverged(spec):
        return {"nll": None, "tasks": {}}
    report = evaluate_runs(
        [spec.run_dir],
        tasks=list(scale.tasks),
        limit=scale.task_limit,
        batch_size=scale.eval_batch_size,
    )
    run = report["runs"][0]
    tasks = {
        task: {k.split(",")[0]: v for k, v in metrics.items() if k.startswith("acc")}
        for task, metrics in run.get("results", {}).items()
    }
    return {
        "nll": run["perplexity"]["nll"],
        "tokens": run["perplexity"].get("tokens"),
        "tasks": tasks,
        "task_limit": scale.task_limit,
    }


def stream_steps(spec: RunSpec, scale: Scale) -> list[float]:
    """Per sub-layer, mean over tokens of |x_out - x_in| / |x_in| on one batch of validation
    windows (the ablation's first batch)."""
    from keelctl.analysis.ablation import data_settings, eval_batches, eval_tokens

    model, tokenizer = Run(spec.run_dir).load_model(torch.device("cpu"))
    d = data_settings([spec.run_dir], None)[0]
    seq_len = min(d.seq_len, model.config.max_seq_len)
    x, _ = next(iter(eval_batches(eval_tokens(d, tokenizer), seq_len, scale.ablation_tokens, 16)))
    steps = []
    with torch.no_grad():
        h = model.embed(x)
        for sub in model.sublayers:
            out = sub(h)
            steps.append(((out - h).norm(dim=-1) / h.norm(dim=-1)).mean().item())
            h = out
    return steps


def ablation(spec: RunSpec, scale: Scale) -> dict:
    from keelctl.analysis.ablation import ablate

    if _diverged(spec):
        return {"full_loss": None}
    L = spec.depth
    common = dict(tokens=scale.ablation_tokens, batch_size=scale.eval_batch_size)
    single = ablate([spec.run_dir], **common)[0]
    block = ablate([spec.run_dir], unit="block", **common)[0]
    size, every = max(2, L // 4), max(1, L // 8)
    starts = ",".join(str(i) for i in range(0, L - size + 1, every))
    ranges = ablate([spec.run_dir], layers=starts, range_size=size, **common)[0]

    def rows(res) -> list[dict]:
        return [{k: r[k] for k in ROW_KEYS} for r in res.rows()]

    return {
        "full_loss": single.full_loss,
        "tokens": single.info["tokens"],
        "single": rows(single),
        "block": rows(block),
        "range": rows(ranges),
        "range_size": size,
        "step": stream_steps(spec, scale),
    }


MEASURES = {"eval": evaluate, "ablation": ablation}


def measures_for(names: tuple[str, ...], scale: Scale) -> dict[str, Measure]:
    """The named measures bound to `scale` (picklable, for --jobs worker processes)."""
    return {name: functools.partial(MEASURES[name], scale=scale) for name in names}
