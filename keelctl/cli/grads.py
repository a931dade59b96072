"""`keelctl plot-grads`: gradient flow through depth, from runs or fresh models."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from keelctl.cli.app import command, console
from keelctl.errors import KeelError


@command("plot-grads")
def plot_grads(
    sources: list[str] = typer.Argument(
        ...,
        metavar="RUN|RECIPE...",
        help="Run dirs (made by `keelctl train`), or recipes with --at-init.",
    ),
    at_init: bool = typer.Option(
        False, "--at-init", help="SOURCES are recipes: build fresh models, measure, no training."
    ),
    steps: str | None = typer.Option(
        None, "--steps", help="Recorded steps to draw, e.g. 0,100,last. Default: 0,last."
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="PNG (1200x450 px); the heatmap goes beside it as NAME-heatmap.png. "
        "Default: FIRST_RUN/grads.png, or grads-at-init.png with --at-init.",
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the numbers as JSON."),
    overrides: list[str] = typer.Option(
        [], "--set", help="With --at-init: recipe override key.path=value (repeatable)."
    ),
    batches: int | None = typer.Option(
        None, "--batches", help="With --at-init: batches measured as one step (default 4)."
    ),
) -> None:
    """Gradient norm per sub-layer (the paper's 'layers'), bottom to top, with the skip-path
    theory: Post-LN 2^(-(L-l)/2), Keel (α/√(α²+1))^(L-l), DeepNorm with its a, Pre-LN 1."""
    from keelctl.analysis import gradflow

    if at_init:
        if steps is not None:
            raise KeelError("--steps applies to run dirs; --at-init measures step 0 only")
        curves = gradflow.at_init_curves(sources, overrides, 4 if batches is None else batches)
        heatmap_of = None
        output = output or Path("grads-at-init.png")
    else:
        if overrides or batches is not None:
            raise KeelError("--set and --batches apply to --at-init only; drop them for run dirs")
        wanted = gradflow.parse_steps(steps or "0,last")
        histories = gradflow.read_runs(sources)
        curves = [curve for h in histories for curve in h.select(wanted)]
        heatmap_of = histories[0]
        output = output or Path(sources[0]) / "grads.png"
    written = gradflow.write_outputs(curves, output, heatmap_of, json_path)

    table = Table(
        title="Gradient flow (L = sub-layers; 0/top = sub-layer 0 ÷ sub-layer L-1)",
        caption="stream = |dLoss/dx_in| on the residual stream; min/top = its lowest sub-layer "
        "÷ top; theory = skip-path gain if |F(x)| ~ |x|",
    )
    table.add_column("run", no_wrap=True)
    table.add_column("scheme", no_wrap=True)
    table.add_column("L", justify="right")
    table.add_column("step", justify="right")
    for col in ("stream 0/top", "stream min/top", "theory 0/top", "param 0/top"):
        table.add_column(col, justify="right", min_width=7)
    for c in curves:
        theory = gradflow.theory_gain(c.config)
        lowest = min(c.stream_grad_norm) / c.stream_grad_norm[-1]
        table.add_row(
            c.name,
            c.scheme,
            str(c.n_sublayers),
            str(c.step),
            f"{c.bottom_top_ratio:.3g}",
            f"{lowest:.3g}",
            f"{theory[0] / theory[-1]:.2g}",
            f"{c.param_bottom_top_ratio:.3g}",
        )
    console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in written))
