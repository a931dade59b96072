"""`keelctl eval RUN... --checkpoints all|STEPS`: score the step checkpoints a run kept
(trainer.keep_checkpoints: RUN/checkpoints/step-NNNNNNN.ckpt) on held-out text and lm-eval
tasks, into one table (a row per run and step) and a figure of loss and task scores against
tokens trained on (docs/eval.md).

A checkpoint is read with torch.load(weights_only=True): tensors and plain data only, so a
checkpoint cannot run code. Its weights are the model's at that step; its tokenizer is the
run's. Everything a request can get wrong is checked before any model runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from keelctl.atomic import atomic_path
from keelctl.errors import KeelError, first_line
from keelctl.eval.device import resolve_device
from keelctl.eval.perplexity import token_perplexity
from keelctl.eval.runner import check_output, heldout_documents, heldout_spec, write_report
from keelctl.model import build_model
from keelctl.runs import CHECKPOINTS, SUMMARY_JSON, Run, read_checkpoint_file

TOKENIZER_KEY = "keelctl_tokenizer"  # keelctl.train.module.TOKENIZER_KEY


def kept_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{step: path} of the run's step checkpoints, oldest first; a KeelError if it kept none."""
    found = Run(run_dir).step_checkpoints()
    if not found:
        raise KeelError(
            f"{run_dir} kept no step checkpoints ({Path(run_dir) / CHECKPOINTS}/step-*.ckpt); "
            "train it with trainer.keep_checkpoints=K to keep the last K, or drop --checkpoints"
        )
    return found


def select_checkpoints(run_dir: Path, spec: str) -> dict[int, Path]:
    """`all`, or the comma-separated steps of `spec`, each one the run kept."""
    kept = kept_checkpoints(run_dir)
    if spec.strip() == "all":
        return kept
    try:
        steps = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        steps = []
    if not steps:
        raise KeelError(f"--checkpoints {spec!r}: give 'all' or steps separated by commas")
    missing = [s for s in steps if s not in kept]
    if missing:
        raise KeelError(
            f"--checkpoints: {run_dir} did not keep step(s) {', '.join(map(str, missing))}; "
            f"it kept {', '.join(map(str, kept))}"
        )
    return {s: kept[s] for s in dict.fromkeys(steps)}


def load_checkpoint(path: Path, device: torch.device):
    """(model in eval mode, tokenizer) from a training checkpoint."""
    from keelctl.config import RecipeConfig
    from keelctl.data import tokenizer_from_dict

    ckpt = read_checkpoint_file(path)
    try:
        recipe = RecipeConfig(**ckpt["hyper_parameters"]["recipe"])
        tokenizer = tokenizer_from_dict(ckpt[TOKENIZER_KEY])
        weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
        model = build_model(recipe.model)
        model.load_state_dict(weights, strict=True)
    except Exception as e:  # pydantic and torch raise many types for another tool's checkpoint
        raise KeelError(
            f"{path} is not a keelctl training checkpoint ({first_line(e)}); evaluate the step "
            "checkpoints that `keelctl train` kept"
        ) from None
    return model.to(device).eval(), tokenizer


def tokens_per_step(run: Run) -> int:
    """Tokens trained on per optimizer step, from the run's summary.json or its recipe."""
    if run.has(SUMMARY_JSON):
        return int(run.summary()["tokens_per_step"])
    recipe = run.recipe
    if recipe.sequences_per_step is None:
        raise KeelError(
            f"{run.path} has no {SUMMARY_JSON} and its recipe says devices: auto, so its tokens "
            "per step are unknown; finish or resume the run first"
        )
    return recipe.sequences_per_step * recipe.data.seq_len


def evaluate_checkpoints(
    run_dirs: Sequence[Path],
    checkpoints: str,
    *,
    data: str | None = None,
    tasks: Sequence[str] = (),
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    output: Path | None = None,
) -> dict:
    """{"settings", "rows": one per run and step: run, step, tokens, perplexity, results}."""
    from keelctl.eval.harness import resolve_tasks, run_tasks
    from keelctl.eval.lm_eval_adapter import KeelLM
    from keelctl.sources.keel import trained_context

    if batch_size < 1:
        raise KeelError(f"--batch-size must be at least 1, got {batch_size}")
    torch_device = resolve_device(device)
    chosen = {Path(run): select_checkpoints(run, checkpoints) for run in run_dirs}
    opened = {path: Run(path) for path in chosen}  # each run's recipe and model.json read once
    per_step = {path: tokens_per_step(run) for path, run in opened.items()}
    for run in opened.values():
        heldout_spec(run, data)  # a run without config.yaml needs --data: say so before work
    if tasks:
        resolve_tasks(list(tasks))
    check_output(output)
    limit = int(limit) if limit is not None and limit >= 1 else limit
    rows, texts = [], {}
    for run, steps in chosen.items():
        context = trained_context(opened[run])
        for step, path in steps.items():
            model, tokenizer = load_checkpoint(path, torch_device)
            spec, docs, n_bytes = heldout_documents(opened[run], data, tokenizer, texts)
            row = {
                "run": str(run),
                "step": step,
                "tokens": step * per_step[run],
                "checkpoint": str(path),
                "perplexity": {
                    "data": spec,
                    **token_perplexity(
                        model,
                        docs,
                        n_bytes=n_bytes,
                        eot_id=tokenizer.eot_id,
                        batch_size=batch_size,
                        max_len=context,
                    ),
                },
            }
            if tasks:
                lm = KeelLM.from_model(model, tokenizer, batch_size=batch_size, max_length=context)
                out = run_tasks(lm, list(tasks), num_fewshot=num_fewshot, limit=limit)
                row["results"] = out["results"]
            rows.append(row)
    settings = dict(checkpoints=checkpoints, data=data, tasks=list(tasks), limit=limit)
    report = {"settings": {**settings, "device": str(torch_device)}, "rows": rows}
    if output is not None:
        write_report(output, report)
    return report


def task_scores(row: dict) -> dict[str, float]:
    """{"task metric": value} of a row's lm-eval results (no stderr; filter none dropped)."""
    scores = {}
    for task, metrics in row.get("results", {}).items():
        for key, value in metrics.items():
            if "," in key and "_stderr," not in key and isinstance(value, (int, float)):
                name, filt = key.split(",", 1)
                scores[f"{task} {name}" + ("" if filt == "none" else f" ({filt})")] = value
    return scores


def checkpoints_figure(rows: Sequence[dict]):
    """Left: held-out loss (nats/token) against tokens trained on, a line per run; right:
    each task score against tokens, a line per run and task metric."""
    from keelctl.figures import new_figure

    fig = new_figure(11.0, 4.2)
    loss_ax, task_ax = fig.subplots(1, 2)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for k, run in enumerate(runs):
        mine = [r for r in rows if r["run"] == run]
        tokens = [r["tokens"] for r in mine]
        name = Path(run).name
        loss_ax.plot(
            tokens, [r["perplexity"]["nll"] for r in mine], "o-", color=f"C{k}", label=name
        )
        names = list(dict.fromkeys(n for r in mine for n in task_scores(r)))
        for j, metric in enumerate(names):
            values = [task_scores(r).get(metric, float("nan")) for r in mine]
            style = ["o-", "s--", "^:", "d-."][j % 4]
            task_ax.plot(tokens, values, style, color=f"C{k}", label=f"{name}: {metric}")
    loss_ax.set(xlabel="tokens trained on", ylabel="held-out loss (nats/token)", title="loss")
    task_ax.set(xlabel="tokens trained on", ylabel="score", title="tasks")
    for ax in (loss_ax, task_ax):
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    return fig


def write_figure(fig, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    except OSError as e:
        raise KeelError(f"cannot write {path} ({e.strerror}); choose a writable location") from None


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the table: run, step, tokens, held-out loss and ppl, each task metric."""
    rows = report["rows"]
    metrics = list(dict.fromkeys(m for r in rows for m in task_scores(r)))
    header = ["run", "step", "tokens", "held-out loss", "held-out ppl", *metrics]
    body = []
    for r in rows:
        scores = task_scores(r)
        ppl = r["perplexity"]
        cells = [Path(r["run"]).name, str(r["step"]), f"{r['tokens']:,}"]
        cells += [f"{ppl['nll']:.4f}", f"{ppl['ppl']:.2f}"]
        body.append(cells + [f"{scores[m]:.4f}" if m in scores else "-" for m in metrics])
    return header, body
