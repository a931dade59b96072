"""grad-flow and redundancy: `plot-grads` and `ablate-layers` over the depth-sweep's runs.

grad-flow trains Post-LN and DeepNorm runs beside depth-sweep's Keel and Pre-LN ones (same
recipe otherwise, so they share run dirs under one --runs-dir) and reads each run's grads.csv
at step 0 (the fresh model) and at its last step. The number per run is the residual-stream
gradient ratio |dL/dx_in| at sub-layer FROM = 2 over the same at the top sub-layer L-1: the
span the skip-path analysis is about. Sub-layers 0 and 1 are left out because the stream
entering them is the raw embedding (init std 0.02, norm ~0.02 sqrt(d)), and the first outer norm
above it scales its gradient by ~1/|x| (about 50x at d_model 64) whatever the depth: plot-grads'
bottom/top ratio (sub-layer 0) is shown beside ours. "Holds level" means |log10 ratio| is small,
so the claims compare |log10 ratio| (lower is better); single-seed differences under GRAD_TIE
decades are ties.

redundancy ablates every sub-layer of the Keel and Pre-LN runs on the same held-out tokens.
Per run: rel ΔPPL_i = PPL without sub-layer i / full PPL - 1. The three claims of appendix A
become these rules:
  first    the share of sub-layers 2.. whose rel ΔPPL exceeds the first block's (sub-layers 0, 1)
           largest. Reproduced when it is 0 in every run (the first block is the most critical);
           opposite when it is above 0.5 in every run (the first block is below the median of
           the rest); otherwise not at this scale.
  shallow  median rel ΔPPL over the shallow sub-layers 1 .. L/2 - 1, Keel vs Pre-LN, higher is
           better (the compare rule, ties under SHALLOW_TIE).
  trend    Spearman rho between index and rel ΔPPL over sub-layers 2 .. L-1. Reproduced when
           rho >= RHO in every run, opposite when rho <= -RHO in every run, otherwise not at
           this scale.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from keelctl.repro import paper
from keelctl.repro.plan import Outcome, Progress, RunSpec
from keelctl.repro.protocol import Context, Protocol, register
from keelctl.repro.report import Report, md_table, rel
from keelctl.repro.sweeps import by, depth_sweep_specs
from keelctl.repro.verdicts import NOT_AT_SCALE, OPPOSITE, REPRODUCED, Verdict, claim

GRAD_SCHEMES = ("post_ln", "deepnorm", "pre_ln", "keel")
GRAD_TIE = math.log10(1.1)  # decades: ratios within 10% of each other
FROM = 2  # the first sub-layer above the first block
SHALLOW_TIE = 1e-3
RHO = 0.3


def _trained(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.summary.get("status") != "diverged"]


# ---- grad-flow ------------------------------------------------------------------------------


def plan_grad_flow(ctx: Context) -> list[RunSpec]:
    return depth_sweep_specs(ctx, ctx.scale.grad_schemes)


def analyse_grad_flow(
    ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress
) -> None:
    from keelctl.analysis.gradflow import read_grads, theory_gain, write_outputs

    sc = ctx.scale
    curves = {}  # run dir -> (curve at step 0, curve at the last step)
    for depth in sc.depths:
        group = [o for o in _trained(outcomes) if o.spec.depth == depth]
        histories = [read_grads(o.spec.run_dir) for o in group]
        picked = [h.select([0, "last"]) for h in histories]
        for o, pair in zip(group, picked, strict=True):
            curves[o.spec.run_dir] = (pair[0], pair[-1])
        png = ctx.out / f"grad-flow-L{depth}.png"
        write_outputs(
            [c for pair in picked for c in pair],
            png,
            heatmap_of=histories[-1],
            json_path=ctx.out / f"grad-flow-L{depth}.json",
        )
        report.add(
            f"![gradient flow, {depth} sub-layers]({png.name})\n\n*{depth} sub-layers: "
            "stream gradient per sub-layer at step 0 and the last step, theory dashed; "
            f"heatmap of {histories[-1].name}: [{png.stem}-heatmap.png]"
            f"({png.stem}-heatmap.png)*"
        )
        ctx.commands.append(
            "keelctl plot-grads "
            + " ".join(str(o.spec.run_dir) for o in group)
            + f" --steps 0,last --output {rel(png, ctx.out.parent)}"
            + f" --json {rel(png.with_suffix('.json'), ctx.out.parent)}"
        )
        progress.report(f"grad-flow {depth} sub-layers", progress.done + len(group))

    def ratio(curve) -> float:
        s = curve.stream_grad_norm
        return s[FROM] / s[-1] if len(s) > FROM + 1 else math.nan

    def level(when: int):
        return lambda o: abs(math.log10(ratio(curves[o.spec.run_dir][when])))

    rows = []
    for depth in sc.depths:
        for when, name in ((0, "at init (step 0)"), (1, "after training (last step)")):
            keel = by(_trained(outcomes), level(when), scheme="keel", depth=depth)
            for base in ("post_ln", "deepnorm"):
                report.verdicts.append(
                    claim(
                        f"{depth} sub-layers, {name}: Keel's stream gradient holds level better "
                        f"than {base}'s (|log10 ratio|, sub-layer {FROM} / top)",
                        paper.GRAD_FLOW if base == "post_ln" else "DeepNorm: about exp(-sqrt(L)/2)",
                        keel,
                        by(_trained(outcomes), level(when), scheme=base, depth=depth),
                        "lower",
                        tie=GRAD_TIE,
                        fmt=".3g",
                        names=("keel", base),
                    )
                )
        for o in (o for o in _trained(outcomes) if o.spec.depth == depth):
            first, last = curves[o.spec.run_dir]
            gain = theory_gain(o.spec.recipe.model)
            theory = gain[FROM] / gain[-1] if len(gain) > FROM + 1 else math.nan
            rows.append(
                (
                    o.spec.name,
                    o.spec.scheme,
                    depth,
                    f"{ratio(first):.3g}",
                    f"{ratio(last):.3g} (step {last.step})",
                    f"{theory:.3g}",
                    f"{first.bottom_top_ratio:.3g}",
                    f"{last.bottom_top_ratio:.3g}",
                )
            )
    report.add(
        f"Residual-stream gradient ratio, sub-layer {FROM} / top sub-layer (1 = level; "
        "theory: the skip-path gain alone, as if |F(x)| ~ |x|), and plot-grads' "
        "sub-layer 0 / top ratio, which includes the embedding's first norm.",
        md_table(
            (
                "run",
                "scheme",
                "sub-layers",
                "ratio at init",
                "ratio after training",
                "theory",
                "0/top at init",
                "0/top after training",
            ),
            rows,
        ),
    )


# ---- redundancy -----------------------------------------------------------------------------


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 points."""
    if len(x) < 3:
        return math.nan

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else math.nan


def _every_run(
    text: str,
    paper_text: str,
    values: dict[str, float],
    holds,
    against,
    single: bool,
    fmt: str = ".3g",
) -> Verdict:
    """Reproduced when `holds` in every run, opposite when `against` in every run."""
    ours = ", ".join(f"{k} {v:{fmt}}" for k, v in values.items())
    if not values or not all(math.isfinite(v) for v in values.values()):
        return Verdict(text, paper_text, ours, NOT_AT_SCALE + " (no data)", "every run must agree")
    if all(holds(v) for v in values.values()):
        verdict = REPRODUCED
    elif all(against(v) for v in values.values()):
        verdict = OPPOSITE
    else:
        verdict = NOT_AT_SCALE
    return Verdict(
        text,
        paper_text,
        ours,
        verdict + (" (single seed)" if single else ""),
        "every run must agree",
    )


def analyse_redundancy(
    ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress
) -> None:
    from keelctl.analysis.ablation import ablate, write_outputs

    sc = ctx.scale
    rel_dppl: dict[str, list[float]] = {}
    for depth in sc.depths:
        group = [o for o in _trained(outcomes) if o.spec.depth == depth]
        base = progress.done
        results = ablate(
            [o.spec.run_dir for o in group],
            tokens=sc.ablation_tokens,
            batch_size=sc.eval_batch_size,
            on_step=lambda run, done, total: progress.report(f"ablating {run}"),
        )
        out_dir = ctx.out / f"ablation-L{depth}"
        write_outputs(results, out_dir)
        progress.report(f"ablated {depth} sub-layers", base + len(group))
        for o, res in zip(group, results, strict=True):
            rel_dppl[o.spec.name] = [r["rel_dppl"] for r in res.rows()]
        report.add(
            f"![layer removal, {depth} sub-layers]({out_dir.name}/ablation.png)\n\n"
            f"*{depth} sub-layers: ΔPPL when one sub-layer is removed (log axis), "
            f"numbers in [{out_dir.name}/ablation.csv]({out_dir.name}/ablation.csv)*"
        )
        ctx.commands.append(
            "keelctl ablate-layers "
            + " ".join(str(o.spec.run_dir) for o in group)
            + f" --tokens {sc.ablation_tokens} --batch-size {sc.eval_batch_size}"
            + f" --output-dir {rel(out_dir, ctx.out.parent)}"
        )

    def first_place(r: list[float]) -> float:
        """How many of sub-layers 2.. beat the first block's largest rel ΔPPL, as a fraction of
        them: 0 = the first block is the most critical, > 0.5 = it is below their median."""
        top = max(r[:2])
        return sum(x > top for x in r[2:]) / (len(r) - 2) if len(r) > 2 else math.nan

    def shallow(r: list[float]) -> float:
        part = r[1 : len(r) // 2]
        return statistics.median(part) if part else math.nan

    def trend(r: list[float]) -> float:
        return spearman(list(range(2, len(r))), r[2:])

    single = len(ctx.seeds) == 1
    places = {k: first_place(r) for k, r in rel_dppl.items()}
    report.verdicts.append(
        _every_run(
            "The first block is the most critical: share of later sub-layers whose removal costs "
            "more (0 in every run)",
            paper.REDUNDANCY["first"],
            places,
            lambda x: x == 0,
            lambda x: x > 0.5,
            single,
            fmt=".2f",
        )
    )
    for depth in sc.depths:
        names = {o.spec.name: o for o in _trained(outcomes) if o.spec.depth == depth}
        groups = {
            s: [shallow(rel_dppl[n]) for n, o in names.items() if o.spec.scheme == s]
            for s in ("keel", "pre_ln")
        }
        report.verdicts.append(
            claim(
                f"{depth} sub-layers: Keel's shallow sub-layers (1..L/2-1) are less redundant "
                "(median rel ΔPPL)",
                paper.REDUNDANCY["shallow"],
                groups["keel"],
                groups["pre_ln"],
                "higher",
                tie=SHALLOW_TIE,
                fmt=".3g",
            )
        )
    rhos = {k: trend(r) for k, r in rel_dppl.items()}
    report.verdicts.append(
        _every_run(
            f"After the first block, ΔPPL grows with depth (Spearman rho >= {RHO} in every run)",
            paper.REDUNDANCY["trend"],
            rhos,
            lambda x: x >= RHO,
            lambda x: x <= -RHO,
            single,
            fmt=".2f",
        )
    )
    rows = [
        (k, f"{places[k]:.2f}", f"{shallow(r):.3g}", f"{rhos[k]:.2f}") for k, r in rel_dppl.items()
    ]
    report.add(
        md_table(
            (
                "run",
                "share of sub-layers 2.. costlier than the first block",
                "shallow median rel ΔPPL",
                "Spearman rho (sub-layers >= 2)",
            ),
            rows,
        )
    )


register(
    Protocol(
        name="grad-flow",
        title="gradient flow through depth (the paper's gradient view)",
        claim="Post-LN's gradient vanishes toward the bottom of a deep stack while Keel's stays "
        "near level (section 3's skip-path analysis).",
        plan=plan_grad_flow,
        analyse=analyse_grad_flow,
    )
)
register(
    Protocol(
        name="redundancy",
        title="layer redundancy (appendix A, Figure 6)",
        claim="; ".join(paper.REDUNDANCY.values()) + " (appendix A).",
        plan=depth_sweep_specs,
        analyse=analyse_redundancy,
    )
)
