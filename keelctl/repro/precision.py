"""precision: what the numerics of a bf16 Keel implementation cost at depth (issue 25).

The public Keel implementations add alpha*x + F in the working dtype, bf16 in training, and keep
the norm gains in it. keelctl keeps the stream, the skip sum and every gain fp32
(docs/scale.md). Each variant here is depth-sweep's run (same depth, seed, LR, steps, warm-up)
with one model key, simulated by rounding in fp32 compute:

    fp32         keelctl's policy: depth-sweep's run itself (same run dir, hash and record)
    bf16-gains   model.norm_dtype bf16: the LN_out gains, whose output is the stream, rounded
    bf16-stream  model.stream_dtype bf16: the stream and every skip sum rounded after each
                 sub-layer

Runs: Keel at the main depth (design's deepest: 256 sub-layers on cpu) with every seed, Keel at
the deep depth (scale-map's trains depth: 1024 on cpu) with the first seed, and Pre-LN at the
main depth with the first seed as a control (Pre-LN has no LN_out, so no bf16-gains run).
Per run: the final validation loss (summary.json) and the gradient level after training
(|log10| of the stream-gradient ratio sub-layer 2 / top, from grads.csv: grad-flow's number).
Claims, fixed before any run: at each depth, Keel in fp32 reaches a lower validation loss than
Keel with bf16 gains, and than Keel with a bf16 stream; at the main depth, a bf16 stream raises
Keel's loss more than Pre-LN's (the rise: the bf16-stream run's loss minus the fp32 run's at
the same seed, higher = a larger cost). Differences under TIE nats/token are ties.
"""

from __future__ import annotations

from keelctl.repro.figures import panels, variant_loss_figure
from keelctl.repro.paper import PAPER_PRECISION
from keelctl.repro.plan import Context, Outcome, Progress, Protocol, RunSpec, set_flags, variant_run
from keelctl.repro.readings import (
    FROM,
    TIE,
    diverged,
    final_loss,
    grad_level_after,
    paired_diff,
    variant_groups,
)
from keelctl.repro.report import Report, md_table
from keelctl.repro.verdicts import claim, fmt_group

# variant -> (what it changes, in words; the model keys it sets)
VARIANTS = {
    "fp32": ("keelctl's policy: stream, skip sum and gains fp32", {}),
    "bf16-gains": ("LN_out gains rounded to bf16", {"norm_dtype": "bf16"}),
    "bf16-stream": ("stream and skip sum rounded to bf16", {"stream_dtype": "bf16"}),
}


def depths(ctx: Context) -> tuple[int, int]:
    """(main depth, deep depth) in sub-layers: design's deepest, scale-map's trains depth."""
    sc = ctx.scale
    return sc.design_depths[-1], sc.map_trains_depths[0]


def planned(ctx: Context) -> list[tuple[str, RunSpec]]:
    """(variant, run): Keel at the main depth (every seed) and the deep one (first seed), the
    Pre-LN control at the main depth (first seed, no bf16-gains)."""
    main, deep = depths(ctx)
    cells = [("keel", main, seed) for seed in ctx.seeds] + [
        ("pre_ln", main, ctx.seeds[0]),
        ("keel", deep, ctx.seeds[0]),
    ]
    out = []
    for scheme, depth, seed in cells:
        for variant, (_, keys) in VARIANTS.items():
            if scheme == "pre_ln" and "norm_dtype" in keys:
                continue  # Pre-LN has no gain on its stream (ModelConfig refuses it)
            name = f"precision-{variant}-{scheme}-L{depth}-s{seed}"
            out.append((variant, variant_run(ctx, scheme, depth, seed, keys, name)))
    return out


Groups = dict[tuple[str, int], dict[str, list[Outcome]]]  # (scheme, depth) -> variant -> runs


def _table(groups: Groups) -> str:
    rows = []
    for (scheme, depth), group in groups.items():
        for variant, runs in group.items():
            n_diverged = f"{sum(diverged(o) for o in runs)}/{len(runs)}" if runs else "n/a"
            losses, levels = [final_loss(o) for o in runs], [grad_level_after(o) for o in runs]
            cells = (len(runs), fmt_group(losses), fmt_group(levels, ".3g"), n_diverged)
            rows.append((scheme, depth, variant, set_flags(VARIANTS[variant][1]), *cells))
    columns = "scheme | sub-layers | variant | recipe keys | n | val loss | grad level | diverged"
    return md_table(columns, rows)


def _claims(ctx: Context, groups: Groups) -> list:
    """The claims fixed before any run (module docstring), in order."""
    out = []
    for (scheme, depth), group in groups.items():
        if scheme != "keel":
            continue
        fp32 = [final_loss(o) for o in group["fp32"]]
        for variant in ("bf16-gains", "bf16-stream"):
            text = f"{depth} sub-layers: Keel with keelctl's fp32 policy reaches a lower "
            text += f"validation loss than Keel with {VARIANTS[variant][0]}"
            other, names = [final_loss(o) for o in group[variant]], ("fp32", variant)
            out.append(claim(text, PAPER_PRECISION, fp32, other, "lower", TIE, names=names))
    main, _ = depths(ctx)
    keel, pre_ln = groups["keel", main], groups["pre_ln", main]
    rises = [paired_diff(g["bf16-stream"], g["fp32"]) for g in (keel, pre_ln)]
    text = f"{main} sub-layers: a bf16 stream raises Keel's validation loss more than Pre-LN's "
    text += "(the rise: bf16-stream minus fp32, same seed)"
    names = ("keel rise", "pre_ln rise")
    out.append(claim(text, PAPER_PRECISION, *rises, "higher", TIE, names=names))
    return out


def analyse(ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress) -> None:
    sc = ctx.scale
    progress.report("precision: reading records", progress.total)
    groups = variant_groups(planned(ctx), outcomes, lambda spec: (spec.scheme, spec.depth))
    report.add(
        f"{sc.steps} steps at LR {sc.lr:g} (warm-up 10% then cosine, as depth-sweep); each "
        "variant is depth-sweep's recipe plus the keys shown, simulated by rounding in fp32 "
        "(docs/scale.md); n = recorded seeds; val loss = final validation loss (nats/token, lower "
        f"is better); grad level = |log10| of the stream-gradient ratio sub-layer {FROM} / top "
        "after training (decades, 0 = level). Depth in sub-layers.",
        _table(groups),
    )
    report.verdicts.extend(_claims(ctx, groups))
    losses = {
        cell: {v: [final_loss(o) for o in runs] for v, runs in g.items()}
        for cell, g in groups.items()
    }
    report.figure(
        variant_loss_figure(
            {f"{scheme}, {depth} sub-layers": v for (scheme, depth), v in losses.items()},
            size=(3.6, 3.8),
            rotation=30,
            sharey=False,
        ),
        "precision-val-loss.png",
        "Final validation loss per variant, one panel per scheme and depth (mean ± std over seeds)",
    )
    report.figure(
        grads_figure(groups),
        "precision-stream-grads.png",
        "Residual-stream gradient norm per sub-layer after training (first seed), per variant",
    )


def grads_figure(groups: Groups):
    """One panel per (scheme, depth): |dL/dx| on the residual stream entering each sub-layer at
    the last recorded step of the first seed's run, one line per variant (log scale)."""
    from keelctl.analysis.grad_flow import read_grads

    fig, axes = panels(len(groups), 3.6, 3.8)
    for ax, ((scheme, depth), by_variant) in zip(axes, groups.items(), strict=False):
        for k, (name, runs) in enumerate(by_variant.items()):
            if runs and not diverged(runs[0]):
                curve = read_grads(runs[0].record).select(["last"])[0]
                ax.plot(curve.stream_grad_norm, label=name, color=f"C{k}")
        ax.set(
            title=f"{scheme}, {depth} sub-layers",
            xlabel="sub-layer",
            yscale="log",
            ylabel="|dL/dx| into the sub-layer",
        )
        ax.grid(alpha=0.3)
        if ax.lines:  # a cell with no finished run yet has none
            ax.legend(fontsize=7)
    return fig


PRECISION_PROTOCOL = Protocol(
    name="precision",
    title="What bf16 numerics cost Keel at depth (a bf16 stream, bf16 norm gains)",
    claim="keelctl keeps Keel's residual stream, skip sum and norm gains fp32; the public "
    "implementations keep them bf16. Keel in fp32 reaches a lower validation loss than Keel with "
    "its LN_out gains rounded to bf16 and than Keel with its stream and skip sum rounded to bf16, "
    "at each depth; and a bf16 stream costs Keel more than it costs Pre-LN.",
    plan=lambda ctx: [spec for _, spec in planned(ctx)],
    analyse=analyse,
)
