"""grad-flow: `plot-grads` over the depth-sweep's runs and Post-LN / DeepNorm runs beside them.

grad-flow trains Post-LN and DeepNorm runs beside depth-sweep's Keel and Pre-LN ones (same
recipe otherwise, so they share run dirs and records) and reads each run's grads.csv (kept in
its record) at step 0 (the fresh model) and at its last step. The number per run is the
residual-stream gradient ratio |dL/dx_in| at sub-layer FROM = 2 over the same at the top
sub-layer L-1: the span the skip-path analysis is about. Sub-layers 0 and 1 are left out because
the stream entering them is the raw embedding (init std 0.02, norm ~0.02 sqrt(d)), and the first
outer norm above it scales its gradient by ~1/|x| (about 50x at d_model 64) whatever the depth:
plot-grads' bottom/top ratio (sub-layer 0) is shown beside ours. "Holds level" means |log10
ratio| is small, so the claims compare |log10 ratio| (lower is better); single-seed differences
under GRAD_TIE decades are ties. A ratio of exactly 0 (the gradient at FROM fell below float32's
smallest normal number and was flushed to zero) counts as VANISHED = 37.9 decades, the float32
floor: a lower bound on how far it fell, so a claim that it fell further than Keel's is judged
on the bound, not dropped as a diverged run's non-finite number.
"""

from __future__ import annotations

import math

from keelctl.repro import paper
from keelctl.repro.context import Context, Protocol
from keelctl.repro.plan import Outcome, Progress, RunSpec
from keelctl.repro.report import Report, md_table, rel
from keelctl.repro.sweeps import by, depth_sweep_specs, xy_figure
from keelctl.repro.verdicts import claim, mean_std

GRAD_TIE = math.log10(1.1)  # decades: ratios within 10% of each other
FROM = 2  # the first sub-layer above the first block
# decades from 1 down to float32's smallest normal number (1.18e-38): a ratio of exactly 0 fell
# at least this far (gradients below it are flushed to zero, torch.set_flush_denormal)
VANISHED = -math.log10(1.1754943508222875e-38)


def _trained(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.summary.get("status") != "diverged"]


def stream_ratio(curve) -> float:
    """A GradCurve's residual-stream gradient ratio, sub-layer FROM / top (nan: too shallow)."""
    s = curve.stream_grad_norm
    return s[FROM] / s[-1] if len(s) > FROM + 1 else math.nan


def grad_level(curve) -> float:
    """|log10 stream_ratio| in decades: 0 = level; VANISHED (a lower bound) when the gradient
    at FROM is exactly 0."""
    r = stream_ratio(curve)
    return VANISHED if r == 0 else abs(math.log10(r))


def theory_ratio(cfg) -> float:
    """The skip-path gain alone (grad_profile.theory_gain), sub-layer FROM / top."""
    from keelctl.analysis.gradflow import theory_gain

    gain = theory_gain(cfg)
    return gain[FROM] / gain[-1] if len(gain) > FROM + 1 else math.nan


# ---- grad-flow ------------------------------------------------------------------------------


def plan_grad_flow(ctx: Context) -> list[RunSpec]:
    sc = ctx.scale
    fixes = [s for s in depth_sweep_specs(ctx, sc.fix_schemes) if s.depth in sc.max_lr_depths]
    return depth_sweep_specs(ctx, sc.grad_schemes) + fixes


def analyse_grad_flow(
    ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress
) -> None:
    from keelctl.analysis.gradflow import read_grads, write_outputs

    sc = ctx.scale
    curves = {}  # run dir -> (curve at step 0, curve at the last step)
    for depth in sc.depths:
        group = [o for o in _trained(outcomes) if o.spec.depth == depth]
        if not group:
            continue
        histories = [read_grads(o.record) for o in group]
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

    def level(when: int):
        return lambda o: grad_level(curves[o.spec.run_dir][when])

    report.figure(
        xy_figure(
            f"Gradient level after training: |log10(sub-layer {FROM} / top)|",
            "depth (sub-layers)",
            "|log10 stream-gradient ratio| (0 = level)",
            {
                scheme: (
                    list(sc.depths),
                    *zip(
                        *(
                            mean_std(
                                by(_trained(outcomes), level(1), scheme=scheme, depth=d)
                                or [math.nan]
                            )
                            for d in sc.depths
                        ),
                        strict=True,
                    ),
                )
                for scheme in (*sc.grad_schemes, *sc.fix_schemes)
            },
        ),
        "grad-level-vs-depth.png",
        "How far each scheme's stream gradient falls from the top to sub-layer 2 after "
        "training, mean ± std over seeds",
    )

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
            theory = theory_ratio(o.spec.recipe.model)
            rows.append(
                (
                    o.spec.name,
                    o.spec.scheme,
                    depth,
                    f"{stream_ratio(first):.3g}",
                    f"{stream_ratio(last):.3g} (step {last.step})",
                    f"{theory:.3g}",
                    f"{first.bottom_top_ratio:.3g}",
                    f"{last.bottom_top_ratio:.3g}",
                )
            )
    report.add(
        f"Residual-stream gradient ratio, sub-layer {FROM} / top sub-layer (1 = level; "
        "theory: the skip-path gain alone, as if |F(x)| ~ |x|), and plot-grads' "
        "sub-layer 0 / top ratio, which includes the embedding's first norm. A ratio of 0 "
        f"(flushed to zero in float32) counts as {VANISHED:.1f} decades in the verdicts, a "
        "lower bound.",
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


GRAD_FLOW = Protocol(
    name="grad-flow",
    title="gradient flow through depth (the paper's gradient view)",
    claim="Post-LN's gradient vanishes toward the bottom of a deep stack while Keel's stays "
    "near level (section 3's skip-path analysis).",
    plan=plan_grad_flow,
    analyse=analyse_grad_flow,
)
