"""The figures several protocols draw: a line per scheme over one swept number, training-loss
curves per depth, and a point per variant (design's and precision's ablations)."""

from __future__ import annotations

import math

from keelctl.figures import new_figure
from keelctl.repro.plan import Outcome
from keelctl.repro.readings import by
from keelctl.repro.verdicts import mean_std
from keelctl.runs import Run


def panels(n: int, width: float, height: float, **subplots):
    """A figure of n panels in a row (at least one), each `width` inches wide (4.5 at least in
    all), and its axes."""
    fig = new_figure(max(4.5, width * n), height)
    return fig, fig.subplots(1, max(1, n), squeeze=False, **subplots)[0]


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


def xy_figure(title: str, xlabel: str, ylabel: str, series: dict[str, tuple[list, list, list]]):
    """One line per scheme with mean +- std error bars over a log x axis (an LR, a depth):
    series[scheme] = (xs, means, stds)."""
    fig = new_figure()
    ax = fig.add_subplot()
    for k, (name, (xs, means, stds)) in enumerate(series.items()):
        means = [m if math.isfinite(m) else math.nan for m in means]  # diverged: no point
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=f"C{k}", label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.set_xscale("log")
    xs = sorted({x for s in series.values() for x in s[0]})
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _train_loss(o: Outcome) -> tuple[list[int], list[float]]:
    return Run(o.record).metric("train_loss")


def mean_curves_figure(outcomes: list[Outcome], depths, smooth: int, schemes):
    """One panel per depth: each scheme's smoothed training loss, mean over its seeds with a
    ± std band (runs that stopped early end the band where the shortest run ends)."""
    import numpy as np

    from keelctl.repro.divergence import smoothed

    fig, axes = panels(len(depths), 4.5, 3.8, sharey=True)
    for ax, depth in zip(axes, depths, strict=True):
        for k, scheme in enumerate(schemes):
            curves = by(outcomes, _train_loss, scheme=scheme, depth=depth)
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
    by_title: dict[str, dict[str, list[float]]], size: tuple[float, float], rotation: int, sharey
):
    """One panel per title: each variant's final validation loss, mean ± std over its finite
    values, n beside the variant name (a variant with no finite value gets no point); `size`
    is (width per panel, height)."""
    fig, axes = panels(len(by_title), *size, sharey=sharey)
    for ax, (title, by_variant) in zip(axes, by_title.items(), strict=False):
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
