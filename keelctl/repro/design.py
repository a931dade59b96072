"""design: Keel's design choices one at a time (the paper's section 4.2 path, issue 17).

Each variant is depth-sweep's Keel run (same depth, seed, LR, steps and warm-up) with one model
key changed, so the baseline IS depth-sweep's Keel run (same run dir, hash and record) and every
variant runs alone as `keelctl train RECIPE --set model.KEY=VALUE`. Per variant and depth: the
final validation loss (summary.json: the run's fixed validation set after the last step), the
gradient level after training (|log10| of the residual-stream gradient ratio, sub-layer 2 / top,
from the record's grads.csv: grad-flow's number), the skip-path gain of the paper's formula
alpha/sqrt(alpha^2+1) per sub-layer over the same span, and the seeds that diverged; beside the
loss, Δ = the variant's loss minus Keel's at the same seed (same data order, so most seed noise
cancels: shown for reading, the verdicts keep the stated rule). Claims: Keel
as published (inner norm, alpha = L, v2 first block, no final norm) reaches a lower validation
loss than each variant; the paper leaves the final norm unstated, so that claim is keelctl's
default (none) against a final norm. A diverged run's loss is +inf, worse than any finite one
(see the rules).
Single-seed differences under TIE nats/token are ties.
"""

from __future__ import annotations

from keelctl.repro.figures import variant_loss_figure
from keelctl.repro.paper import PAPER_DESIGN
from keelctl.repro.plan import Context, Outcome, Progress, Protocol, RunSpec, set_flags, variant_run
from keelctl.repro.readings import (
    FROM,
    TIE,
    diverged,
    final_loss,
    grad_level_after,
    paired_diff,
    theory_ratio,
    variant_groups,
)
from keelctl.repro.report import Report, md_table
from keelctl.repro.verdicts import claim, fmt_group

BASELINE = "keel"
# variant -> (what it changes, in words; the model keys it sets at depth L)
VARIANTS = {
    BASELINE: ("Keel as published", lambda L: {}),
    "naive": ("naive residual scaling (no inner norm)", lambda L: {"keel_inner_norm": False}),
    "alpha-1": ("alpha = 1", lambda L: {"alpha": 1.0}),
    "alpha-L0.25": ("alpha = L^(1/4)", lambda L: {"alpha": L**0.25}),
    "alpha-L0.5": ("alpha = sqrt(L)", lambda L: {"alpha": L**0.5}),
    "first-v1": ("a v1 first block (all Pre-LN)", lambda L: {"keel_first_block": "v1"}),
    "first-none": ("no special first block", lambda L: {"keel_first_block": "none"}),
    "final-norm": ("a final norm before the head", lambda L: {"final_norm": True}),
}


def model_keys(variant: str, depth: int) -> dict:
    """The model keys `variant` sets on depth-sweep's Keel recipe at `depth` sub-layers."""
    return VARIANTS[variant][1](depth)


def planned(ctx: Context) -> list[tuple[str, RunSpec]]:
    """(variant, run) for each depth, seed and variant; the baseline is depth-sweep's run."""
    sc = ctx.scale
    out = []
    for depth in sc.design_depths:
        for seed in ctx.seeds:  # seed before variant: a sweep cut short leaves whole seeds
            for variant in VARIANTS:
                name, keys = f"design-{variant}-L{depth}-s{seed}", model_keys(variant, depth)
                out.append((variant, variant_run(ctx, "keel", depth, seed, keys, name)))
    return out


def _claim(depth: int, variant: str, keel: list[float], other: list[float]):
    """'Keel as published reaches a lower validation loss than the variant'; the paper is
    silent on a final norm, so that claim is keelctl's default (none) against one."""
    ours, says = "Keel as published (inner norm, alpha = L, v2 first block)", PAPER_DESIGN[variant]
    than = VARIANTS[variant][0]
    if variant == "final-norm":
        ours, says, than = "Keel without a final norm (keelctl's default)", "unstated", "with one"
    text = f"{depth} sub-layers: {ours} reaches a lower validation loss than {than}"
    return claim(text, says, keel, other, "lower", TIE, names=("keel", variant))


def analyse(ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress) -> None:
    sc, variants = ctx.scale, planned(ctx)
    model_of = {(variant, spec.depth): spec.recipe.model for variant, spec in variants}
    progress.report("design: reading records", progress.total)
    losses = {}  # depth -> variant -> final validation losses (one per recorded seed)
    for depth, group in variant_groups(variants, outcomes, lambda spec: spec.depth).items():
        losses[depth] = {v: [final_loss(o) for o in runs] for v, runs in group.items()}
        rows = []
        for variant, runs in group.items():
            paired = fmt_group(paired_diff(runs, group[BASELINE]), ".3g")
            levels = fmt_group([grad_level_after(o) for o in runs], ".3g")
            n_diverged = f"{sum(diverged(o) for o in runs)}/{len(runs)}" if runs else "n/a"
            cells = (fmt_group(losses[depth][variant]), paired if variant != BASELINE else "")
            cells += (levels, f"{theory_ratio(model_of[variant, depth]):.3g}", n_diverged)
            n = f"{len(runs)}/{len(ctx.seeds)}"
            keys = set_flags(model_keys(variant, depth))
            rows.append((variant, keys, n, *cells, PAPER_DESIGN[variant]))
            if variant != BASELINE:
                report.verdicts.append(
                    _claim(depth, variant, losses[depth][BASELINE], losses[depth][variant])
                )
        report.add(
            f"**{depth} sub-layers** (L = {depth}; {sc.steps} steps, LR {sc.lr:g}, warm-up 10% "
            "then cosine, as depth-sweep). Each variant is depth-sweep's Keel recipe plus the "
            "keys shown; n = recorded seeds / planned; val loss = final validation loss "
            "(nats/token, lower is better); Δ = the variant's loss minus Keel's at the same "
            "seed (shown, not used by the verdicts); grad level = |log10| of the stream-"
            f"gradient ratio sub-layer {FROM} / top after training (decades, 0 = level); skip "
            "gain = the paper's alpha/sqrt(alpha^2+1) per sub-layer over the same span.",
            md_table(
                "variant | recipe keys | n | val loss | Δ vs keel | grad level | "
                f"skip gain {FROM}/top (theory) | diverged | what the paper says",
                rows,
            ),
        )
    report.figure(
        variant_loss_figure(
            {f"{depth} sub-layers": by_variant for depth, by_variant in losses.items()},
            size=(4.0, 4.2),
            rotation=45,
            sharey=True,
        ),
        "design-val-loss.png",
        "Final validation loss per variant, one panel per depth (mean ± std over seeds)",
    )


DESIGN_PROTOCOL = Protocol(
    name="design",
    title="Keel's design path, one choice at a time (section 4.2)",
    claim="Each of Keel's choices (inner norm, alpha = L, the v2 first block) matters: Keel as "
    "published trains to a lower validation loss than every variant that drops one of them; "
    "the final norm, which the paper leaves unstated, is tested the same way.",
    plan=lambda ctx: [spec for _, spec in planned(ctx)],
    analyse=analyse,
)
