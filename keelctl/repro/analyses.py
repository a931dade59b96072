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

from keelctl.repro.figures import series, xy_figure
from keelctl.repro.paper import PAPER_GRAD_FLOW
from keelctl.repro.plan import Context, Outcome, Progress, Protocol, RunSpec, depth_sweep_specs
from keelctl.repro.readings import (
    FROM,
    GRAD_TIE,
    VANISHED,
    grad_level,
    keel_vs,
    select,
    stream_ratio,
    theory_ratio,
    trained,
)
from keelctl.repro.report import Report, md_table, rel
from keelctl.repro.verdicts import claim


def plan(ctx: Context) -> list[RunSpec]:
    sc = ctx.scale
    fixes = [s for s in depth_sweep_specs(ctx, sc.fix_schemes) if s.depth in sc.max_lr_depths]
    return depth_sweep_specs(ctx, sc.grad_schemes) + fixes


def analyse(ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress) -> None:
    sc = ctx.scale
    runs = trained(outcomes)
    curves = {}  # run dir -> (GradCurve at step 0, GradCurve at the last step)
    for depth in sc.depths:
        group = select(runs, depth=depth)
        if group:
            curves |= _plot_depth(ctx, group, depth, report)
            progress.report(f"grad-flow {depth} sub-layers", progress.done + len(group))

    def level(when: int):
        return lambda o: grad_level(curves[o.spec.run_dir][when])

    report.figure(
        xy_figure(
            f"Gradient level after training: |log10(sub-layer {FROM} / top)|",
            "depth (sub-layers)",
            "|log10 stream-gradient ratio| (0 = level)",
            series(runs, level(1), "depth", list(sc.depths), (*sc.grad_schemes, *sc.fix_schemes)),
        ),
        "grad-level-vs-depth.png",
        "How far each scheme's stream gradient falls from the top to sub-layer 2 after "
        "training, mean ± std over seeds",
    )
    said = {"post_ln": PAPER_GRAD_FLOW, "deepnorm": "DeepNorm: about exp(-sqrt(L)/2)"}
    for depth in sc.depths:
        for when, name in ((0, "at init (step 0)"), (1, "after training (last step)")):
            for base in ("post_ln", "deepnorm"):
                keel, other = keel_vs(runs, level(when), base, depth=depth)
                text = f"{depth} sub-layers, {name}: Keel's stream gradient holds level better "
                text += f"than {base}'s (|log10 ratio|, sub-layer {FROM} / top)"
                names = ("keel", base)
                verdict = claim(text, said[base], keel, other, "lower", GRAD_TIE, ".3g", names)
                report.verdicts.append(verdict)
    report.add(*_ratio_table(ctx, runs, curves))


def _plot_depth(ctx: Context, group: list[Outcome], depth: int, report: Report) -> dict:
    """plot-grads' figures of the runs at `depth` (step 0 and the last step), into the report;
    returns each run's two curves."""
    from keelctl.analysis.grad_flow import read_grads, write_outputs

    histories = [read_grads(o.record) for o in group]
    picked = [h.select([0, "last"]) for h in histories]
    # the heatmap shows Keel's run (the claims' subject), not whichever scheme was planned last
    heat = [
        h for h, o in zip(histories, group, strict=True) if o.spec.scheme == "keel"
    ] or histories
    png = ctx.out / f"grad-flow-L{depth}.png"
    write_outputs(
        [c for pair in picked for c in pair],
        png,
        heatmap_of=heat[-1],
        json_path=ctx.out / f"grad-flow-L{depth}.json",
    )
    report.add(
        f"![gradient flow, {depth} sub-layers]({png.name})\n\n*{depth} sub-layers: "
        "stream gradient per sub-layer at step 0 and the last step, theory dashed; "
        f"heatmap of {heat[-1].name}: [{png.stem}-heatmap.png]"
        f"({png.stem}-heatmap.png)*"
    )
    ctx.commands.append(
        "keelctl plot-grads "
        + " ".join(str(o.spec.run_dir) for o in group)
        + f" --steps 0,last --output {rel(png, ctx.out.parent)}"
        + f" --json {rel(png.with_suffix('.json'), ctx.out.parent)}"
    )
    return {o.spec.run_dir: (pair[0], pair[-1]) for o, pair in zip(group, picked, strict=True)}


def _ratio_table(ctx: Context, runs: list[Outcome], curves: dict) -> tuple[str, str]:
    rows = []
    for depth in ctx.scale.depths:
        for o in select(runs, depth=depth):
            first, last = curves[o.spec.run_dir]
            ratios = (stream_ratio(first), stream_ratio(last), theory_ratio(o.spec.recipe.model))
            ratios += (first.bottom_top_ratio, last.bottom_top_ratio)
            cells = [f"{r:.3g}" for r in ratios]
            cells[1] += f" (step {last.step})"
            rows.append((o.spec.name, o.spec.scheme, depth, *cells))
    return (
        f"Residual-stream gradient ratio, sub-layer {FROM} / top sub-layer (1 = level; "
        "theory: the skip-path gain alone, as if |F(x)| ~ |x|), and plot-grads' "
        "sub-layer 0 / top ratio, which includes the embedding's first norm. A ratio of 0 "
        f"(flushed to zero in float32) counts as {VANISHED:.1f} decades in the verdicts, a "
        "lower bound.",
        md_table(
            (
                "run | scheme | sub-layers | ratio at init | ratio after training | theory | "
                "0/top at init | 0/top after training"
            ),
            rows,
        ),
    )


GRAD_FLOW_PROTOCOL = Protocol(
    name="grad-flow",
    title="gradient flow through depth (the paper's gradient view)",
    claim="Post-LN's gradient vanishes toward the bottom of a deep stack while Keel's stays "
    "near level (section 3's skip-path analysis).",
    plan=plan,
    analyse=analyse,
)
