"""max-lr (the paper's Table 1): the last learning rate before divergence under a linear ramp.

Every run warms its LR linearly from 0 to the scale's peak (5e-2) over all of its steps, with no
decay: optim.warmup_steps = trainer.max_steps, so warmup_cosine_lr never reaches its cosine and
step s uses peak * (s + 1) / steps. The per-step training losses and LRs are read back from
metrics.csv and the divergence detector (divergence.py) finds where each run diverged; the slow
rule's reference is, at each step, the lowest loss of any scheme at the same depth and seed.
A run that never diverges has a max LR of at least the peak, and is counted as the peak.
"""

from __future__ import annotations

import math

from matplotlib.ticker import NullFormatter

from keelctl.figures import new_figure
from keelctl.repro.callbacks import StopWhenDiverged
from keelctl.repro.divergence import smoothed
from keelctl.repro.figures import panels
from keelctl.repro.paper import PAPER_MAX_LR, PAPER_MAX_LR_RAMP
from keelctl.repro.plan import Context, Outcome, Progress, Protocol, RunSpec, ramp_spec
from keelctl.repro.readings import Curve, by, detect_ramps, keel_vs, read_curve, select
from keelctl.repro.report import Report, md_table
from keelctl.repro.verdicts import claim, fmt_group, mean_std

BASELINES = ("pre_ln", "deepnorm", "post_ln")


def plan(ctx: Context) -> list[RunSpec]:
    sc = ctx.scale
    return [
        ramp_spec(ctx, scheme, depth, seed, sc.max_lr_steps)
        for depth in sc.max_lr_depths
        for scheme in sc.max_lr_schemes
        for seed in ctx.seeds
    ]


def callbacks(ctx: Context):
    return lambda spec: [StopWhenDiverged(ctx.scale.divergence, spec.steps)]


def loss_vs_lr_figure(curves: list[Curve], depths: tuple[int, ...], smooth: int):
    fig, axes = panels(len(depths), 6.0, 4.2)
    schemes = list(dict.fromkeys(c.spec.scheme for c in curves))
    for ax, depth in zip(axes, depths, strict=True):
        for c in select(curves, depth=depth):
            colour = f"C{schemes.index(c.spec.scheme)}"
            label = c.spec.scheme if c.spec.seed == min(x.spec.seed for x in curves) else None
            losses = smoothed(c.losses, smooth)
            ax.plot(c.lrs, losses, color=colour, linewidth=1.2, label=label)
            if c.found is not None and c.found.last_lr is not None:
                k = c.steps.index(c.found.step)
                ax.plot(c.lrs[k], losses[k], "x", color=colour, markersize=10, markeredgewidth=2)
            elif c.found is None and c.steps:  # o = the rule found no divergence
                ax.plot(c.lrs[-1], losses[-1], "o", color=colour, mfc="none")
        ax.set(
            title=f"{depth} sub-layers",
            xlabel="learning rate (linear ramp)",
            ylabel=f"training loss (mean of {smooth} steps)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(
        "Loss along the LR ramp, every seed; x = detected divergence (the LR before it is the "
        "max LR), o = never diverged"
    )
    return fig


def max_lr_figure(curves: list[Curve], depths: tuple[int, ...]):
    fig = new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    schemes = list(dict.fromkeys(c.spec.scheme for c in curves))
    for k, scheme in enumerate(schemes):
        runs = [select(curves, scheme=scheme, depth=d) for d in depths]
        ys = [[c.max_lr for c in group] for group in runs]
        for d, group in zip(depths, runs, strict=True):
            for c in group:  # ^ = never diverged: the max LR is at least the ramp's peak
                marker = "o" if c.found is not None else "^"
                ax.plot(d, max(c.max_lr, 1e-6), marker, color=f"C{k}", alpha=0.6)
        stats = [mean_std(y) if y else (math.nan, math.nan) for y in ys]
        ax.errorbar(
            depths,
            [max(m, 1e-6) for m, _ in stats],
            yerr=[sd for _, sd in stats],
            fmt="-",
            capsize=3,
            color=f"C{k}",
            label=f"{scheme} (ours, mean ± std)",
        )
        theirs = [(d, row[scheme]) for d, row in PAPER_MAX_LR.items() if scheme in row]
        if theirs:
            ax.plot(
                *zip(*theirs, strict=True),
                "--s",
                color=f"C{k}",
                markerfacecolor="white",
                label=f"{scheme} (paper)",
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="depth (sub-layers)",
        ylabel="max LR (last LR before divergence)",
        title="Max tolerable LR: ours (filled; ^ never diverged) and the paper's Table 1 "
        "(hollow, dashed)",
    )
    ax.xaxis.set_minor_formatter(NullFormatter())
    ticks = sorted({*depths, *PAPER_MAX_LR})
    ax.set_xticks(ticks, [str(d) for d in ticks])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small", ncol=2)
    return fig


def analyse(ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress) -> None:
    sc = ctx.scale
    curves = []
    for o in outcomes:
        curves.append(read_curve(o))
        progress.report(f"read {o.spec.name}", progress.done + 1)
    detect_ramps(curves, lambda steps: sc.divergence)  # calibrated on this ramp (docs/repro.md)
    report.verdicts.extend(_claims(ctx, curves))
    report.add(*_table(ctx, curves))
    report.figure(
        loss_vs_lr_figure(curves, sc.max_lr_depths, sc.divergence.smooth),
        "loss-vs-lr.png",
        "Training loss against the LR of the ramp, per depth",
    )
    report.figure(
        max_lr_figure(curves, sc.max_lr_depths),
        "max-lr.png",
        "Max tolerable LR per scheme and depth, ours beside the paper's Table 1",
    )
    rows = []
    for c in curves:
        if f := c.found:
            rows.append((c.spec.name, f.step, f.rule, f"{c.max_lr:.3g}", f.detail))
        else:  # never diverged: the max LR is at least the ramp's peak
            rows.append((c.spec.name, "-", "none", f">= {c.max_lr:.3g}", "healthy to the end"))
    report.add(md_table("run | divergence step | rule | max LR | detail", rows))
    rules = ", ".join(f"{k}={v}" for k, v in sc.divergence.to_dict().items())
    report.section(
        "Divergence rules",
        f"Detector settings at this scale: {rules}.",
        "See keelctl/repro/divergence.py and docs/repro.md for each rule. The rules were "
        "calibrated on the committed single-seed 250-step curves before any run of this ramp "
        "(docs/repro.md, 'Calibration'): windows scale with the ramp, a spike is 1.2 x the "
        "running minimum, and a plateau counts only while it sits more than "
        f"{sc.divergence.plateau_ref_factor:g} x above the best scheme's loss at the same step. "
        "Runs stop early once a nan or spike divergence is certain (StopWhenDiverged).",
    )


def _max_lr(c: Curve) -> float:
    return c.max_lr


def _claims(ctx: Context, curves: list[Curve]) -> list:
    """Keel's max LR above each baseline's at each depth; tie one LR step of the ramp."""
    sc = ctx.scale
    tie, out = sc.max_lr_peak / sc.max_lr_steps, []
    for depth in sc.max_lr_depths:
        near = min(PAPER_MAX_LR, key=lambda d: abs(math.log(d / depth)))
        said = PAPER_MAX_LR[near]
        for base in (*BASELINES, *sc.fix_schemes):
            text = f"{depth} sub-layers: Keel tolerates a higher LR than {base}"
            paper = "not in the paper"
            if base in said:
                paper = f"{near} layers: keel {said['keel']:.3g} vs {base} {said[base]:.3g}"
            keel, other = keel_vs(curves, _max_lr, base, depth=depth)
            out.append(claim(text, paper, keel, other, "higher", tie, ".3g", ("keel", base)))
    return out


def _table(ctx: Context, curves: list[Curve]) -> tuple[str, str]:
    sc = ctx.scale
    rows = []
    for scheme in sc.max_lr_schemes:
        row = [scheme]
        for depth in sc.max_lr_depths:
            found = by(curves, lambda c: c.found, scheme=scheme, depth=depth)
            rules = ", ".join(sorted({f.rule for f in found if f is not None})) or "none"
            never = sum(f is None for f in found)
            note = f" ({never} of {len(found)} never diverged)" if never else ""
            row += [fmt_group(by(curves, _max_lr, scheme=scheme, depth=depth), ".3g") + note, rules]
        row += [f"{PAPER_MAX_LR[d].get(scheme, math.nan):.3g}" for d in PAPER_MAX_LR]
        rows.append(row)
    headers = ["scheme"]
    for depth in sc.max_lr_depths:
        headers += [f"max LR, {depth} sub-layers (ours)", "rule that fired"]
    headers += [f"paper, {d} layers" for d in PAPER_MAX_LR]
    return (
        f"LR ramp: 0 -> {sc.max_lr_peak:g} over {sc.max_lr_steps} steps (paper: "
        f"{PAPER_MAX_LR_RAMP}); one LR step = {sc.max_lr_peak / sc.max_lr_steps:.3g}. A max LR "
        "equal to the peak means the run never diverged. Paper has no Mix-LN number.",
        md_table(headers, rows),
    )


MAX_LR_PROTOCOL = Protocol(
    name="max-lr",
    title="maximum tolerable learning rate (Table 1)",
    claim="Keel tolerates a larger peak learning rate than Pre-LN, DeepNorm and Post-LN, "
    "at every depth (paper Table 1).",
    plan=plan,
    analyse=analyse,
    callbacks=callbacks,
)
