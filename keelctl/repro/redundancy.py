"""redundancy (appendix A, Figure 6): `ablate-layers` over the depth-sweep's Keel and Pre-LN runs.

Each run's record holds ablation.json (measures.py): on the same held-out tokens, the loss with
every single sub-layer removed, every block removed, and ranges of L/4 sub-layers removed, plus
each sub-layer's relative step |x' - x| / |x| on the residual stream. Per removal:
rel ΔPPL = PPL without it / full PPL - 1. The claims of appendix A become these rules:

  first    the share of sub-layers 2.. whose rel ΔPPL exceeds the first block's (sub-layers 0, 1)
           largest. Reproduced when it is 0 in every run (the first block is the most critical);
           opposite when it is above 0.5 in every run (the first block is below the median of
           the rest); otherwise not at this scale.
  shallow  median rel ΔPPL over the shallow sub-layers 1 .. L/2 - 1, Keel vs Pre-LN, higher is
           better (the compare rule, ties under SHALLOW_TIE).
  per step the median of rel ΔPPL / relative step over sub-layers 2 .. L/2 - 1: what removing a
           sub-layer costs per unit of stream change. A Keel sub-layer moves its normalised
           stream by about |F|/(alpha|x|) (alpha = L), so its ΔPPL is small partly by
           construction; this claim asks whether
           Keel's shallow sub-layers are less redundant once their step size is divided out.
  trend    Spearman rho between index and rel ΔPPL over sub-layers 2 .. L-1. Reproduced when
           rho >= RHO in every run, opposite when rho <= -RHO in every run, otherwise not at
           this scale.

How much of ΔPPL the step size sets: per run, the least-squares fit of log rel ΔPPL on log step
over sub-layers 2.. (removals that raise PPL): its slope and R² (the share of the variance of
log ΔPPL across sub-layers that the step size explains).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from operator import attrgetter

import numpy as np

from keelctl.repro.figures import panels
from keelctl.repro.paper import PAPER_REDUNDANCY
from keelctl.repro.plan import SCHEMES, Context, Outcome, Progress, Protocol, depth_sweep_specs
from keelctl.repro.readings import keel_vs, select, trained
from keelctl.repro.report import Report, md_table
from keelctl.repro.verdicts import NOT_AT_SCALE, Verdict, claim, every_run, fmt_group
from keelctl.runs import Run

SHALLOW_TIE = 1e-3
RHO = 0.3
FLOOR = 1e-5  # rel ΔPPL drawn at this floor on log axes (a removal can even lower PPL)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 points or a
    side that is constant."""
    if len(x) < 3:
        return math.nan
    rx, ry = (_ranks(np.asarray(v, dtype=float)) for v in (x, y))
    return float(np.corrcoef(rx, ry)[0, 1]) if rx.std() and ry.std() else math.nan


def _ranks(v: np.ndarray) -> np.ndarray:
    """0-based ranks; tied values share the mean of their ranks."""
    return (v[:, None] > v).sum(1) + ((v[:, None] == v).sum(1) - 1) / 2


def _every_run(
    text: str, paper_text: str, values: dict[str, float], holds, against, single: bool
) -> Verdict:
    """Reproduced when `holds` in every run, opposite when `against` in every run."""
    ours = ", ".join(f"{k} {v:.2f}" for k, v in values.items())
    if all(math.isfinite(v) for v in values.values()):
        runs = values.values()
        verdict = every_run([holds(v) for v in runs], [against(v) for v in runs], single)
    else:
        verdict = NOT_AT_SCALE + " (not finite)"
    return Verdict(text, paper_text, ours, verdict, "every run must agree")


def first_place(r: list[float]) -> float:
    """How many of sub-layers 2.. beat the first block's largest rel ΔPPL, as a fraction of
    them: 0 = the first block is the most critical, > 0.5 = it is below their median."""
    top = max(r[:2])
    return sum(x > top for x in r[2:]) / (len(r) - 2) if len(r) > 2 else math.nan


def shallow(r: Sequence[float], start: int = 1) -> float:
    part = list(r[start : len(r) // 2])
    return statistics.median(part) if part else math.nan


def trend(r: list[float]) -> float:
    return spearman(list(range(2, len(r))), r[2:])


def step_fit(rel: list[float], step: list[float]) -> tuple[float, float]:
    """(slope, R²) of log rel ΔPPL on log step over sub-layers 2.. with rel ΔPPL > 0."""
    pts = [(math.log(s), math.log(r)) for r, s in zip(rel[2:], step[2:], strict=True) if r > 0]
    if len(pts) < 3:
        return math.nan, math.nan
    x, y = np.array(pts).T
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = ((y - y.mean()) ** 2).sum()
    return float(slope), float(1 - (residual**2).sum() / total) if total else math.nan


class RunRemovals:
    """One run's ablation record, by removal kind, and the numbers the claims and tables read
    from it (shallow = the median over sub-layers 1..L/2-1)."""

    def __init__(self, o: Outcome):
        data = Run(o.record).measure("ablation")
        self.spec = o.spec
        self.single = [r["rel_dppl"] for r in data["single"]]
        self.block = [r["rel_dppl"] for r in data["block"]]
        self.ranges = {r["removed"]: r["rel_dppl"] for r in data["range"]}
        self.step = data["step"]
        self.per_step = [r / s for r, s in zip(self.single, self.step, strict=True)]
        self.place, self.rho = first_place(self.single), trend(self.single)
        self.slope, self.r2 = step_fit(self.single, self.step)
        self.dppl, self.dppl_blocks = shallow(self.single), shallow(self.block)
        # from sub-layer 2: sub-layer 1's step is measured from the raw embedding (std 0.02), a
        # jump to the normalised stream that says nothing about the sub-layer (as in grad-flow)
        self.shallow_step = shallow(self.step, start=2)
        self.dppl_per_step = shallow(self.per_step, start=2)


def removal_figure(depth: int, runs: list[RunRemovals]):
    """Three panels: rel ΔPPL per sub-layer, per block, and the relative step per sub-layer;
    each scheme's mean over seeds with a ± std band, log axes."""
    fig, axes = panels(3, 5.0, 3.8)
    for ax, (attr, unit) in zip(
        axes,
        (("single", "sub-layer removed"), ("block", "block removed"), ("step", "sub-layer")),
        strict=True,
    ):
        for k, scheme in enumerate(SCHEMES):
            group = select(runs, scheme=scheme)
            if not group:
                continue
            ys = np.maximum(np.array([getattr(r, attr) for r in group]), FLOOR)
            mean, std = ys.mean(0), ys.std(0)
            xs = np.arange(ys.shape[1])
            ax.plot(xs, mean, color=f"C{k}", label=f"{scheme} (n={len(group)})")
            ax.fill_between(
                xs, np.maximum(mean - std, FLOOR), mean + std, color=f"C{k}", alpha=0.25
            )
        ylabel = "relative step |x'-x|/|x|" if attr == "step" else "rel ΔPPL (log)"
        ax.set(yscale="log", xlabel=unit, ylabel=ylabel, title=f"{depth} sub-layers: {unit}")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:  # a depth with no run yet has no line
            ax.legend(fontsize="small")
    return fig


def analyse(ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress) -> None:
    sc = ctx.scale
    runs = {o.spec.name: RunRemovals(o) for o in trained(outcomes)}
    single = len(ctx.seeds) == 1
    places = {k: r.place for k, r in runs.items()}
    text = "The first block is the most critical: share of later sub-layers whose removal costs"
    said = PAPER_REDUNDANCY["first"]
    top, below_median = (lambda x: x == 0), (lambda x: x > 0.5)
    first = _every_run(f"{text} more (0 in every run)", said, places, top, below_median, single)
    report.verdicts.append(first)
    for depth in sc.depths:
        group = select(runs.values(), depth=depth)
        for text, value in (
            ("median rel ΔPPL", "dppl"),
            ("median rel ΔPPL per unit of relative step, from sub-layer 2", "dppl_per_step"),
        ):
            claim_text = f"{depth} sub-layers: Keel's shallow sub-layers (1..L/2-1) are less "
            claim_text += f"redundant ({text})"
            keel, pre = keel_vs(runs.values(), attrgetter(value), depth=depth)
            said = PAPER_REDUNDANCY["shallow"]
            verdict = claim(claim_text, said, keel, pre, "higher", tie=SHALLOW_TIE, fmt=".3g")
            report.verdicts.append(verdict)
        if group:
            report.figure(
                removal_figure(depth, group),
                f"redundancy-L{depth}.png",
                f"{depth} sub-layers: cost of removing each sub-layer and each block, and each "
                "sub-layer's step on the stream (mean ± std over seeds)",
            )
    rhos = {k: r.rho for k, r in runs.items()}
    text = f"After the first block, ΔPPL grows with depth (Spearman rho >= {RHO} in every run)"
    grows, shrinks = (lambda x: x >= RHO), (lambda x: x <= -RHO)
    trend_verdict = _every_run(text, PAPER_REDUNDANCY["trend"], rhos, grows, shrinks, single)
    report.verdicts.append(trend_verdict)
    _tables(ctx, runs, report)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def step_accounting(depth: int, keel: list[RunRemovals], pre: list[RunRemovals]) -> str:
    """One paragraph of measured numbers: how much of a Keel sub-layer's ΔPPL its step sets."""
    ks, ps = (_mean([r.shallow_step for r in g]) for g in (keel, pre))
    kd, pd = (_mean([r.dppl for r in g]) for g in (keel, pre))
    kn, pn = (_mean([r.dppl_per_step for r in g]) for g in (keel, pre))
    r2 = _mean([r.r2 for r in keel])
    return (
        f"**Step-size accounting, {depth} sub-layers** (means over {len(keel)} Keel and "
        f"{len(pre)} Pre-LN runs): a shallow Keel sub-layer moves the residual stream by "
        f"{ks:.3g} of its size (1/alpha = {1 / depth:.3g}), Pre-LN's by {ps:.3g} "
        f"({_ratio(ps, ks):.3g} x Keel's); removing one costs rel ΔPPL {kd:.3g} (Keel) and "
        f"{pd:.3g} (Pre-LN). Across Keel's sub-layers 2.., the step explains R² = {r2:.2f} of the "
        f"variance of log ΔPPL. Per unit of step, Keel's shallow sub-layers cost {kn:.3g} and "
        f"Pre-LN's {pn:.3g} ({_ratio(kn, pn):.3g} x): the verdict rows 'per unit of relative "
        "step' apply the interval rule to this measure."
    )


def _tables(ctx: Context, runs: dict[str, RunRemovals], report: Report) -> None:
    for depth in ctx.scale.depths:
        keel, pre = (select(runs.values(), depth=depth, scheme=k) for k in ("keel", "pre_ln"))
        if keel and pre:
            report.add(step_accounting(depth, keel, pre))
    report.add(*_run_table(runs))
    report.add(*_depth_table(ctx, runs))


def _run_table(runs: dict[str, RunRemovals]) -> tuple[str, str]:
    rows = []
    for k, r in runs.items():
        place = f"{r.place:.2f}" if math.isfinite(r.place) else "n/a"
        medians = (r.dppl, r.shallow_step, r.dppl_per_step, r.dppl_blocks)
        fits = (r.rho, r.slope, r.r2)
        rows.append((k, place, *(f"{x:.3g}" for x in medians), *(f"{x:.2f}" for x in fits)))
    return (
        "Per run. Shallow = sub-layers 1..L/2-1 (blocks 1..L/4-1 for block removal; 2..L/2-1 "
        "for the step and per-step columns); step = "
        "relative change of the residual stream across the sub-layer; slope and R² = fit of "
        "log rel ΔPPL on log step over sub-layers 2.. (R² = share of the variance of ΔPPL "
        "across sub-layers that the step size explains).",
        md_table(
            (
                "run | share of sub-layers 2.. costlier than the first block | "
                "shallow median rel ΔPPL | shallow median step | "
                "shallow median rel ΔPPL / step | shallow median rel ΔPPL, blocks | "
                "Spearman rho (sub-layers >= 2) | slope log ΔPPL ~ log step | R²"
            ),
            rows,
        ),
    )


def _depth_table(ctx: Context, runs: dict[str, RunRemovals]) -> tuple[str, str]:
    summary = []
    for depth in ctx.scale.depths:
        for scheme in SCHEMES:
            group = select(runs.values(), depth=depth, scheme=scheme)
            if not group:
                continue
            ranges = sorted(
                {k for r in group for k in r.ranges}, key=lambda k: int(k.split("-")[0])
            )
            medians = ("shallow_step", "dppl", "dppl_per_step")
            cells = (fmt_group([getattr(r, m) for r in group], ".3g") for m in medians)
            r2 = fmt_group([r.r2 for r in group], ".2f")
            removed = {k: [r.ranges[k] for r in group if k in r.ranges] for k in ranges}
            removed = "; ".join(f"{k}: {fmt_group(v, '.3g')}" for k, v in removed.items())
            summary.append((depth, scheme, *cells, r2, removed))
    return (
        "Per depth and scheme (mean ± std over seeds): how far a shallow sub-layer moves the "
        "stream, what removing it costs, the cost per unit step, how much of the variance of "
        "log ΔPPL the step explains (R²), and rel ΔPPL of each range of L/4 sub-layers removed.",
        md_table(
            (
                "sub-layers | scheme | shallow step | shallow rel ΔPPL | "
                "shallow rel ΔPPL / step | R² (log ΔPPL ~ log step) | ranges removed: rel ΔPPL"
            ),
            summary,
        ),
    )


REDUNDANCY_PROTOCOL = Protocol(
    name="redundancy",
    title="layer redundancy (appendix A, Figure 6)",
    claim="; ".join(PAPER_REDUNDANCY.values()) + " (appendix A).",
    plan=depth_sweep_specs,
    analyse=analyse,
    measures=("ablation",),
)
