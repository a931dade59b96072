"""The figures several protocols draw: a line per scheme over one swept number, training-loss
curves per depth, and a point per variant (design's and precision's ablations)."""

from __future__ import annotations

import math

from keelctl.figures import new_figure
from keelctl.repro.plan import Outcome
from keelctl.repro.readings import by
from keelctl.repro.verdicts import mean_std
from keelctl.runs import Run


def series(outcomes: list[Outcome], value, key: str, keys: list, schemes) -> dict:
    """xy_figure's series: per scheme, value's mean and std over the runs at each of `keys`
    (the spec field `key`: "lr", "depth")."""
    out = {}
    for scheme in schemes:
        stats = [
            mean_std(by(outcomes, value, scheme=scheme, **{key: k}) or [math.nan]) for k in keys
        ]
        out[scheme] = (keys, [m for m, _ in stats], [s for _, s in stats])
    return out


def xy_figure(
    title: str,
    xlabel: str,
    ylabel: str,
    series: dict[str, tuple[list, list, list]],
    logx: bool = True,
):
    """One line per scheme with mean +- std error bars: series[scheme] = (xs, means, stds)."""
    fig = new_figure()
    ax = fig.add_subplot()
    for k, (name, (xs, means, stds)) in enumerate(series.items()):
        means = [m if math.isfinite(m) else math.nan for m in means]  # diverged: no point
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=f"C{k}", label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log")
        xs = sorted({x for s in series.values() for x in s[0]})
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def mean_curves_figure(outcomes: list[Outcome], depths, smooth: int, schemes):
    """One panel per depth: each scheme's smoothed training loss, mean over its seeds with a
    ± std band (runs that stopped early end the band where the shortest run ends)."""
    import numpy as np

    from keelctl.repro.divergence import smoothed

    fig = new_figure(4.5 * len(depths), 3.8)
    axes = fig.subplots(1, len(depths), squeeze=False, sharey=True)[0]
    for ax, depth in zip(axes, depths, strict=True):
        for k, scheme in enumerate(schemes):
            curves = [
                Run(o.record).metric("train_loss")
                for o in outcomes
                if o.spec.scheme == scheme and o.spec.depth == depth
            ]
            if not curves:
                continue
            n = min(len(steps) for steps, _ in curves)
            ys = np.array([smoothed(losses[:n], smooth) for _, losses in curves])
            steps, mean, std = curves[0][0][:n], ys.mean(0), ys.std(0)
            ax.plot(steps, mean, color=f"C{k}", label=f"{scheme} (n={len(curves)})")
            ax.fill_between(steps, mean - std, mean + std, color=f"C{k}", alpha=0.25)
        ax.set(title=f"{depth} sub-layers", xlabel="step", ylabel="training loss (nats/token)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a depth with no run yet has no line
            ax.legend(fontsize="small")
    return fig


def variant_loss_figure(
    panels: dict[str, dict[str, list[float]]], size: tuple[float, float], rotation: int, sharey
):
    """One panel per title: each variant's final validation loss, mean ± std over its finite
    values, n beside the variant name (a variant with no finite value gets no point); `size`
    is (width per panel, height)."""
    fig = new_figure(max(4.5, size[0] * len(panels)), size[1])
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False, sharey=sharey)[0]
    for ax, (title, by_variant) in zip(axes, panels.items(), strict=False):
        for k, values in enumerate(by_variant.values()):
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                m, s = mean_std(finite)
                ax.errorbar([k], [m], yerr=[s], marker="o", capsize=3, color=f"C{k}")
        ax.set_xticks(
            range(len(by_variant)),
            [f"{n} (n={len(v)})" for n, v in by_variant.items()],
            rotation=rotation,
            ha="right",
        )
        ax.set(title=title, ylabel="final validation loss (nats/token)")
        ax.grid(alpha=0.3)
    return fig
