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
        metavar="MODEL|RECIPE...",
        help="Run dirs (made by `keelctl train`), transformers model folders or "
        "hf:NAME[@REVISION] (measured on --data), or recipes with --at-init.",
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
        "Default: FIRST_RUN/grads.png, or grads-at-init.png with --at-init (grads.png without "
        "a run).",
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the numbers as JSON."),
    overrides: list[str] = typer.Option(
        [], "--set", help="With --at-init: recipe override key.path=value (repeatable)."
    ),
    batches: int | None = typer.Option(
        None,
        "--batches",
        help="With --at-init or transformers models: batches measured as one step (default 4).",
    ),
    data: str | None = typer.Option(
        None, "--data", help="Transformers models: the corpus spec their gradients are taken on."
    ),
    device: str = typer.Option("auto", "--device", help="Transformers models: auto, cpu, cuda:N."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Transformers models: float32, bfloat16 or float16."
    ),
    device_map: str | None = typer.Option(
        None, "--device-map", help="Transformers models: auto spreads one over every GPU."
    ),
) -> None:
    """Gradient norm per sub-layer (the paper's 'layers'), bottom to top, with the skip-path
    theory: Post-LN 2^(-(L-l)/2), Keel (α/√(α²+1))^(L-l), DeepNorm with its a, Pre-LN 1.
    Transformers models are measured per block at their released weights; a mix of depths or
    units is drawn on a normalised depth axis."""
    from keelctl.analysis import grad_flow

    if at_init:
        if steps is not None or data is not None:
            raise KeelError("--steps and --data do not apply to --at-init (it measures step 0)")
        curves = grad_flow.at_init_curves(sources, overrides, 4 if batches is None else batches)
        heatmap_of = None
        output = output or Path("grads-at-init.png")
    else:
        curves, heatmap_of, default_output = _recorded_curves(
            sources, steps, overrides, batches, data, device, dtype, device_map
        )
        output = output or default_output
    written = grad_flow.write_outputs(curves, output, heatmap_of, json_path)
    _print_table(curves)
    console.print("wrote " + ", ".join(str(p) for p in written))


def _recorded_curves(sources, steps, overrides, batches, data, device, dtype, device_map):
    """(curves, the history to draw as a heatmap, the default output) of run dirs (their
    grads.csv) and transformers models (measured on --data)."""
    from keelctl.analysis import grad_flow
    from keelctl.sources import is_transformers, open_source

    runs = [s for s in sources if not is_transformers(s)]
    models = [
        open_source(s, dtype=dtype, device_map=device_map) for s in sources if is_transformers(s)
    ]
    if overrides or (batches is not None and not models):
        raise KeelError(
            "--set applies to --at-init only, --batches to --at-init and transformers "
            "models; drop them for run dirs"
        )
    if data is not None and not models:
        raise KeelError("--data applies to transformers models; run dirs use grads.csv")
    wanted = grad_flow.parse_steps(steps or "0,last")
    histories = grad_flow.read_runs(runs)
    curves = [curve for h in histories for curve in h.select(wanted)]
    if models:
        curves += grad_flow.source_curves(models, data, batches or 4, device)
    heatmap_of = histories[0] if histories else None
    return curves, heatmap_of, Path(runs[0]) / "grads.png" if runs else Path("grads.png")


def _print_table(curves: list) -> None:
    """Per curve: bottom/top ratios of the stream and parameter gradients, and the theory's."""
    from keelctl.model.grad_theory import theory_gain

    table = Table(
        title="Gradient flow (L = sub-layers; 0/top = bottom layer ÷ top layer: sub-layers for "
        "runs, blocks for transformers models)",
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
        theory = theory_gain(c.config) if c.config else None
        lowest = min(c.stream_grad_norm) / c.stream_grad_norm[-1]
        table.add_row(
            c.name,
            c.scheme,
            str(c.n_sublayers),
            "released" if c.step is None else str(c.step),
            f"{c.bottom_top_ratio:.3g}",
            f"{lowest:.3g}",
            "-" if theory is None else f"{theory[0] / theory[-1]:.2g}",
            f"{c.param_bottom_top_ratio:.3g}",
        )
    console.print(table)
