"""`keelctl repro PROTOCOL`: one of the paper's protocols end to end, ending in a report
(docs/repro.md)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from keelctl.cli.app import command, console
from keelctl.errors import KeelError


@command("repro")
def repro(
    protocol: str = typer.Argument(
        ...,
        help="max-lr, lr-sweep, depth-sweep, grad-flow, redundancy, scale-map, design, "
        "precision, hops or tuned.",
    ),
    scale: str = typer.Option(
        "cpu",
        "--scale",
        help="A file in keelctl/repro/scale_recipes/: micro (tests), cpu or gpu (paper shapes).",
    ),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per configuration (mean ± std if > 1)."),
    out: Path = typer.Option(
        None,
        "--out",
        help="Report folder, and run dirs unless --runs-dir (default: repro/PROTOCOL-SCALE).",
    ),
    runs_dir: Path | None = typer.Option(
        None,
        "--runs-dir",
        help="Where run dirs go (default: OUT/runs); share it to reuse runs across "
        "protocols (grad-flow and redundancy reuse depth-sweep's).",
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a key of every run's recipe, e.g. data.corpus=PATH."
    ),
    plan_only: bool = typer.Option(
        False, "--plan", help="Print the runs, what each still costs, and the total; train nothing."
    ),
    jobs: int = typer.Option(
        1, "--jobs", help="Runs trained at once, each in its own process (one per core)."
    ),
    train: bool = typer.Option(
        True,
        "--train/--report-only",
        help="--report-only: train nothing; record finished run dirs, report.",
    ),
    depths: str | None = typer.Option(
        None, "--depths", help="Train only runs at these depths (sub-layers), e.g. 64,256."
    ),
    lrs: str | None = typer.Option(
        None, "--lrs", help="tuned: the LR grid, at least two, e.g. 1.5e-3,3e-3,6e-3,1.2e-2."
    ),
) -> None:
    """Run one of the paper's protocols: train what is missing, analyse, write OUT/report.md."""
    from keelctl.repro import make_context, plan_protocol

    out = out or Path("repro") / f"{protocol}-{scale}"
    grid = _lrs(lrs)
    ctx = make_context(protocol, scale, seeds, out, runs_dir, overrides, grid)
    only = _depths(depths)
    if plan_only:
        _print_plan(ctx, plan_protocol(ctx), jobs, only)
        return
    report = _run_with_progress(
        protocol,
        scale,
        seeds,
        out,
        runs_dir,
        overrides,
        jobs=jobs,
        train=train,
        depths=only,
        lrs=grid,
    )
    lines = report.read_text().splitlines()
    console.print(next((line for line in lines if line.startswith("**Verdicts")), ""))
    console.print(f"report: {report}")


def _run_with_progress(
    protocol: str, scale: str, seeds: int, out: Path, runs_dir: Path | None, overrides, **options
) -> Path:
    """run_protocol under a progress bar (transient: the report line is what stays)."""
    from keelctl.repro import run_protocol

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"repro {protocol}", total=None)

        def on_progress(description: str, done: int, total: int) -> None:
            progress.update(task, description=description, completed=done, total=max(total, 1))

        return run_protocol(
            protocol, scale, seeds, out, runs_dir, overrides, on_progress, **options
        )


def _depths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise KeelError(f"--depths {text!r}: give sub-layer counts separated by commas") from None


def _lrs(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise KeelError(f"--lrs {text!r}: give learning rates separated by commas") from None


def _print_plan(ctx, specs, jobs: int, only: list[int] | None) -> None:
    from keelctl.repro.plan import recorded_rate, run_s, scratch_s
    from keelctl.repro.protocol import check_depths, get_protocol

    check_depths(specs, only)
    proto = get_protocol(ctx.protocol)
    measures = proto.measures
    table = Table(title=f"repro {ctx.protocol} --scale {ctx.scale.name}: plan (sub-layers)")
    for col in ("run", "scheme", "sub-layers", "seed", "lr", "steps", "tokens/step", "left"):
        table.add_column(col)
    costs = []
    # a staged plan's later runs (tuned): LR and seed chosen from its records, costed from scratch
    stand_ins = proto.pending(ctx) if proto.pending else []
    for k, spec in enumerate([*specs, *stand_ins]):
        r, per_step = spec.recipe, spec.recipe.sequences_per_step
        skipped = only is not None and spec.depth not in only
        later = k >= len(specs)
        if skipped:
            cost = 0
        elif later:
            no_rate = ctx.scale.step_s_per_sublayer is None
            cost = None if no_rate else scratch_s(ctx.scale, spec, measures)
        else:
            cost = run_s(ctx.scale, spec, ctx.out, measures)
        costs.append(cost)
        table.add_row(
            "(chosen from the last stage's records)" if later else spec.name,
            spec.scheme,
            str(spec.depth),
            "later" if later else str(spec.seed),
            "to choose" if later else f"{spec.lr:g}",
            str(r.trainer.max_steps),
            f"{per_step * r.data.seq_len:,}" if per_step else "auto",
            _left(cost, skipped),
        )
    console.print(table)
    if None in costs:
        console.print("estimate: none at this scale (no measured step time)")
        return
    total = sum(costs)
    console.print(
        f"estimate: {total / 60:.0f} CPU-minutes left for {sum(c > 0 for c in costs)} of "
        f"{len(costs)} runs (training + measures, one thread, quiet machine; max-lr and runs "
        "still to choose an upper "
        f"bound); about {total / 60 / min(jobs, max(1, len(costs))):.0f} min with --jobs {jobs}"
    )
    measured = recorded_rate(ctx.out, specs)
    if measured:
        rate, n = measured
        constant = ctx.scale.step_s_per_sublayer
        scratch = sum(scratch_s(ctx.scale, s, measures) for s in specs) * rate / constant
        console.print(
            f"measured: the {n} recorded runs took a median {rate:.4f} s per step per sub-layer "
            f"(their own wall time), {rate / constant:.2f}x the estimate's {constant}; at that "
            f"rate the whole plan from scratch takes {scratch / 60:.0f} CPU-minutes, about "
            f"{scratch / 60 / min(jobs, len(specs)):.0f} min with --jobs {jobs}"
        )


def _left(cost: float | None, skipped: bool) -> str:
    """The plan's "left" column: what a run still costs in this call."""
    if skipped:
        return "not this call"
    if cost is None:
        return "?"
    return "recorded" if cost == 0 else f"{cost / 60:.1f} min"
