"""`keelctl train` and `keelctl compare-runs`: parse, call keelctl.train, print with rich."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from keelctl.cli.app import command, console
from keelctl.errors import KeelError


@command("train")
def train_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/tiny-keel.yaml."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a recipe key: --set optim.lr=3e-3 (repeat for more)."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Output folder [runs/<recipe name>]."
    ),
    auto: str | None = typer.Argument(
        None,
        metavar="[auto]",
        help="With --resume: `--resume auto` continues when RUN/checkpoints/last.ckpt exists "
        "and starts the run when not (one command line for every start of a requeued job).",
        show_default=False,
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue from RUN/checkpoints/last.ckpt (--resume auto: or start if it is absent).",
    ),
    max_steps: int | None = typer.Option(
        None, "--max-steps", help="Same as --set trainer.max_steps=N."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Same as --set seed=S."),
) -> None:
    """Train a model from a YAML recipe into a run dir (docs/train.md)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from keelctl.config import load_recipe
    from keelctl.train import train

    if auto is not None and str(recipe) == "auto":  # keelctl train --resume auto RECIPE
        recipe, auto = Path(auto), "auto"
    if auto is not None and (auto != "auto" or not resume):
        raise KeelError(
            f"unexpected argument {auto!r} after the recipe; the one word allowed there is "
            "auto, right after --resume (--resume auto)"
        )
    extra = [f"trainer.max_steps={max_steps}"] if max_steps is not None else []
    extra += [f"seed={seed}"] if seed is not None else []
    cfg = load_recipe(recipe, [*overrides, *extra])
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the summary says it all
    summary = train(cfg, run_dir, resume="auto" if auto else resume)
    if rank_zero_only.rank == 0:  # under ddp/fsdp every process gets here
        console.print(summary_table(summary))
    if summary["status"] == "preempted":  # as if the signal had ended it: not done yet
        raise typer.Exit(code=128 + signal.Signals[summary["signal"]])


@command("compare-runs")
def compare_runs_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run dirs made by `keelctl train`."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write loss curves (and in-training eval scores) to this PNG."
    ),
) -> None:
    """Compare finished training runs: losses, tokens, time, the last in-training eval
    scores; optionally plot loss and eval curves."""
    from keelctl.atomic import atomic_path
    from keelctl.runs import METRICS_CSV, Run
    from keelctl.train.curves import eval_label, last_eval_scores, loss_curves

    runs = [Run(d) for d in run_dirs]
    summaries = [r.summary() for r in runs]
    # The table needs no metrics.csv (only --plot does): a run without one shows no scores.
    scores = [last_eval_scores(r) if r.has(METRICS_CSV) else {} for r in runs]
    eval_names = list(dict.fromkeys(name for run in scores for name in run))
    title = "training runs (val = validation loss, nats/token"
    title += "; task metric = last in-training eval score)" if eval_names else ")"
    table = Table(
        "run",
        "scheme",
        "sub-layers",
        "tokens",
        "final val",
        "best val",
        *map(eval_label, eval_names),
        "time",
        title=title,
        box=box.SIMPLE_HEAD,
    )
    for s, run_scores in zip(summaries, scores, strict=True):
        table.add_row(
            s["name"],
            s["residual"],
            str(s["n_sublayers"]),
            f"{s['tokens_seen']:,}",
            _num(s["final_val_loss"]),
            _num(s["best_val_loss"]),
            *(_num(run_scores.get(name)) for name in eval_names),
            f"{s['wall_time_s']:.0f} s",
        )
    console.print(table)
    best = min(summaries, key=lambda s: s["final_val_loss"] or float("inf"))
    lowest = f"[bold]{best['name']}[/bold] ({_num(best['final_val_loss'])})"
    console.print(f"lowest final validation loss: {lowest}")
    if plot is not None:
        figure = loss_curves({s["name"]: r for s, r in zip(summaries, runs, strict=True)})
        with atomic_path(plot) as tmp:
            figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        console.print(f"{'loss and eval' if eval_names else 'loss'} curves: {plot}")


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def summary_table(s: dict) -> Table:
    table = Table(title=f"{s['name']}: {s['status']}", show_header=False)
    rows = [
        ("residual", s["residual"]),
        ("depth", f"{s['n_sublayers']} sub-layers (attention+FFN) = {s['n_blocks']} blocks"),
        ("parameters", f"{s['n_params']:,}"),
        ("steps", f"{s['steps']} / {s['max_steps']}"),
        ("tokens seen", f"{s['tokens_seen']:,}"),
        (
            "final val loss",
            f"{_num(s['final_val_loss'])} nats/token (ppl {_num(s['final_val_ppl'])})",
        ),
        ("best val loss", _num(s["best_val_loss"])),
        ("rollbacks", ", ".join(f"step {r['step']}" for r in s["rollbacks"]) or "none"),
        (
            "wall time",
            f"{s['wall_time_s']:.1f} s ({s['train_tokens_per_s']:,.0f} tokens/s training)",
        ),
        ("outputs", s["run_dir"]),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    return table
