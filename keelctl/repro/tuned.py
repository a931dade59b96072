"""tuned: Keel against today's depth fixes (Pre-LN, Peri-LN, LayerNorm Scaling; Post-LN as the
floor), each at its own best LR, trained 4x depth-sweep's steps (1000 at cpu).

Stages, each decided from the records of the one before (one command runs them in turn, and a
rerun continues from the records after any interruption):

  1. tune     at the tuning depth (64 sub-layers at cpu) every scheme at every LR of the grid
              (--lrs, at least two; the scale's grid is four, a factor 2 apart), seed 0. A
              scheme's best LR: the lowest final validation loss (summary.json; a diverged
              run's is +inf; ties to the lower LR).
  2. confirm  seeds 1 and 2 at each scheme's best LR, at the tuning depth.
  3. deep     at the deep depth (256 at cpu) each scheme's two best LRs of stage 1 on seed 0,
              then seed 1 at the better of the two there.
  equal LR    keel, pre_ln and post_ln at the scale's shared LR (depth-sweep's) at the deep
              depth, seeds 0-1: scale-map's (256, 1000) cell, under scale-map's run names.

Verdicts (the rule above, tie 0.01 nats/token): at each depth, Keel's final validation loss at
its best LR against each baseline's at its own (best vs best), and at the shared LR (equal LR).

Arms are schemes, plus `peri_ln_embnorm`: Peri-LN with a norm on the embedding output
(model.embedding_norm, OLMo-core's --embedding-norm), added after its diagnostic
(docs/results/peri-embedding-norm/) showed plain Peri-LN's token swamped by its first update; it
goes through the same stages and rule. An arm's runs carry its name as their scheme tag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from keelctl.errors import KeelError
from keelctl.repro import records
from keelctl.repro.figures import mean_curves_figure, panels
from keelctl.repro.plan import (
    Context,
    Outcome,
    Progress,
    Protocol,
    RunSpec,
    sweep_spec,
    train_spec,
)
from keelctl.repro.readings import TIE, by, final_loss, select
from keelctl.repro.report import Report, md_table
from keelctl.repro.verdicts import claim, fmt_group
from keelctl.runs import Run

# arm -> (residual scheme, model keys it sets); an arm without keys is its scheme's sweep run
ARMS = {
    "keel": ("keel", {}),
    "pre_ln": ("pre_ln", {}),
    "peri_ln": ("peri_ln", {}),
    "lns": ("lns", {}),
    "post_ln": ("post_ln", {}),
    "peri_ln_embnorm": ("peri_ln", {"embedding_norm": True}),
}
SCHEMES = tuple(ARMS)
BASELINES = SCHEMES[1:]
EQUAL_LR_SCHEMES = ("keel", "pre_ln", "post_ln")  # scale-map's sweep schemes


@dataclass(frozen=True)
class TunedGrid:
    tune_depth: int  # sub-layers: the whole LR grid, then 3 seeds at the best LR
    deep_depth: int  # sub-layers: the two best LRs of tune_depth, 2 seeds at the better
    lrs: tuple[float, ...]
    steps_factor: int = 4  # x depth-sweep's steps
    tune_seeds: int = 3
    deep_seeds: int = 2


GRIDS = {
    "micro": TunedGrid(tune_depth=2, deep_depth=4, lrs=(3e-3, 6e-3), steps_factor=1),
    "cpu": TunedGrid(tune_depth=64, deep_depth=256, lrs=(1.5e-3, 3e-3, 6e-3, 1.2e-2)),
    "gpu": TunedGrid(tune_depth=64, deep_depth=512, lrs=(7.5e-4, 1.5e-3, 3e-3, 6e-3)),
}


def grid(ctx: Context) -> TunedGrid:
    g = GRIDS[ctx.scale.name]
    lrs = tuple(sorted(ctx.lrs)) if ctx.lrs else g.lrs
    if len(set(lrs)) < 2 or min(lrs) <= 0:
        raise KeelError(
            f"--lrs {','.join(f'{x:g}' for x in lrs)}: give at least two distinct positive "
            "learning rates, e.g. --lrs 1.5e-3,3e-3,6e-3,1.2e-2"
        )
    if len(ctx.seeds) != 1:
        raise KeelError(
            f"repro tuned fixes its seeds ({g.tune_seeds} at {g.tune_depth}, {g.deep_seeds} at "
            f"{g.deep_depth} sub-layers); drop --seeds"
        )
    return replace(g, lrs=lrs)


def steps(ctx: Context) -> int:
    return grid(ctx).steps_factor * ctx.scale.steps


def spec(ctx: Context, arm: str, depth: int, lr: float, seed: int) -> RunSpec:
    scheme, keys = ARMS[arm]
    if not keys:
        return sweep_spec(ctx, scheme, depth, steps(ctx), seed, lr)
    name = f"{arm}-L{depth}-lr{lr:g}-steps{steps(ctx)}-s{seed}"
    run = train_spec(ctx, scheme, depth, seed, lr, steps(ctx), name, model=keys)
    return replace(run, scheme=arm)


def recorded_loss(ctx: Context, s: RunSpec) -> float | None:
    """A run's final validation loss from its record (here or a sibling report's) or its
    finished run dir; None when neither holds it yet."""
    found = records.find(ctx.out, s.name) or (s.run_dir if s.finished else None)
    if found is None:
        return None
    return final_loss(Outcome(s, found, Run(found).summary(), "from record"))


def ranked(losses: dict[float, float]) -> list[float]:
    """LRs best first: lowest loss (a diverged run's is +inf), ties to the lower LR."""
    return sorted(losses, key=lambda lr: (losses[lr], lr))


def seed0_candidates(ctx: Context, scheme: str, depth: int, tune_best: list[float]) -> list[float]:
    """The LRs tried on seed 0 at `depth`: the whole grid at the tuning depth; at the deep depth
    the two best of the tuning depth, and the shared LR where the equal-LR runs have it."""
    g = grid(ctx)
    if depth == g.tune_depth:
        return list(g.lrs)
    shared = [ctx.scale.lr] if scheme in EQUAL_LR_SCHEMES else []
    return sorted(set(tune_best[:2] + shared))


def stages(ctx: Context) -> tuple[list[RunSpec], dict[str, list[int]], dict]:
    """(the runs decided so far, per scheme the depths of the runs stages 2-3 still have to
    choose an LR for, the best LR chosen so far per (scheme, depth): a scheme has none at a
    depth until every LR it tries there on seed 0 is recorded)."""
    g, seed0 = grid(ctx), ctx.scale.seed
    specs = [spec(ctx, k, g.tune_depth, lr, seed0) for lr in g.lrs for k in SCHEMES]
    for seed in range(seed0, seed0 + g.deep_seeds):
        specs += [spec(ctx, k, g.deep_depth, ctx.scale.lr, seed) for k in EQUAL_LR_SCHEMES]
    pending, chosen = {}, {}
    for k in SCHEMES:
        best: list[float] = []
        for depth, n_seeds in ((g.tune_depth, g.tune_seeds), (g.deep_depth, g.deep_seeds)):
            tried = [spec(ctx, k, depth, lr, seed0) for lr in seed0_candidates(ctx, k, depth, best)]
            specs += tried
            losses = {s.lr: recorded_loss(ctx, s) for s in tried}
            if any(v is None or math.isnan(v) for v in losses.values()):
                pending[k] = [depth] * (n_seeds - 1)
                if depth == g.tune_depth:  # and the deep depth's two LRs and its seeds
                    pending[k] += [g.deep_depth] * (2 + g.deep_seeds - 1)
                break
            best = ranked(losses)
            chosen[(k, depth)] = best[0]
            more = range(seed0 + 1, seed0 + n_seeds)
            specs += [spec(ctx, k, depth, best[0], seed) for seed in more]
    return specs, pending, chosen


def plan(ctx: Context) -> list[RunSpec]:
    return stages(ctx)[0]


def pending(ctx: Context) -> list[RunSpec]:
    """Stand-ins for the runs later stages will choose, for --plan's cost: the right scheme,
    depth and steps, with the grid's first LR in place of the one still to be chosen."""
    g = grid(ctx)
    return [
        spec(ctx, k, d, g.lrs[0], ctx.scale.seed) for k, ds in stages(ctx)[1].items() for d in ds
    ]


# ---- analysis -------------------------------------------------------------------------------


def _loss(outcomes, scheme, depth, lr, **seed) -> list[float]:
    return by(outcomes, final_loss, scheme=scheme, depth=depth, lr=lr, **seed)


def _seed0(ctx, outcomes, scheme, depth, lr) -> float:
    got = _loss(outcomes, scheme, depth, lr, seed=ctx.scale.seed)
    return got[0] if got else math.nan


def at(scheme: str, lr: float | None) -> str:
    return scheme if lr is None else f"{scheme}@{lr:g}"


def claims(ctx: Context, outcomes: list[Outcome], best: dict, depth: int) -> list:
    """Keel against each baseline at `depth`: best LR vs best LR, and at the shared LR."""
    g, n, shared = grid(ctx), steps(ctx), ctx.scale.lr
    rows, lower = [], "Keel reaches a lower validation loss than"
    said = "not in the paper (its baselines share one LR or cap Pre-LN's)"
    for base in BASELINES:
        text = f"{depth} sub-layers, {n} steps, each at its best LR: {lower} {base}"
        lrs = (best[("keel", depth)], best[(base, depth)])
        a, b = _loss(outcomes, "keel", depth, lrs[0]), _loss(outcomes, base, depth, lrs[1])
        names = (at("keel", lrs[0]), at(base, lrs[1]))
        rows.append(claim(text, said, a, b, "lower", tie=TIE, names=names))
    said = f"Table 3's comparison at {g.steps_factor}x depth-sweep's steps"
    for base in ("pre_ln", "post_ln"):
        text = f"{depth} sub-layers, {n} steps, equal LR {shared:g}: {lower} {base}"
        a, b = _loss(outcomes, "keel", depth, shared), _loss(outcomes, base, depth, shared)
        rows.append(claim(text, said, a, b, "lower", tie=TIE, names=("keel", base)))
    return rows


def analyse(ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress) -> None:
    g = grid(ctx)
    progress.report("tuned: reading summaries", progress.total)
    depths = (g.tune_depth, g.deep_depth)
    chosen = stages(ctx)[2]  # the plan's choice, from the same records as `outcomes`
    best = {(k, d): chosen.get((k, d)) for k in SCHEMES for d in depths}
    rows = []
    for depth in depths:
        report.verdicts.extend(claims(ctx, outcomes, best, depth))
        for k in SCHEMES:
            lr = best[(k, depth)]
            at_best = fmt_group(_loss(outcomes, k, depth, lr))
            at_shared = fmt_group(_loss(outcomes, k, depth, ctx.scale.lr))
            chosen = "not yet (grid incomplete)" if lr is None else f"{lr:g}"
            rows.append((depth, k, chosen, at_best, at_shared))
    report.add(
        f"{steps(ctx)} steps per run ({g.steps_factor}x depth-sweep's), final validation loss "
        "in nats/token (lower is better); depth in sub-layers. Best LR: chosen on seed 0 at "
        f"{g.tune_depth} sub-layers over the grid {', '.join(f'{x:g}' for x in g.lrs)}; at "
        f"{g.deep_depth} sub-layers between that scheme's two best, then a second seed.",
        md_table(
            f"sub-layers | scheme | best LR | loss at best LR | loss at {ctx.scale.lr:g}", rows
        ),
    )
    edge = [k for k in SCHEMES if best[(k, g.tune_depth)] in (g.lrs[0], g.lrs[-1])]
    if edge:
        report.add(
            f"Best LR at the edge of the grid (a better one may lie outside it): {', '.join(edge)}."
        )
    report.figure(
        loss_vs_lr_figure(ctx, outcomes),
        "loss-vs-lr.png",
        "Final validation loss against LR, seed 0, per scheme and depth",
    )
    best_runs = [o for o in outcomes if o.spec.lr == best[(o.spec.scheme, o.spec.depth)]]
    report.figure(
        mean_curves_figure(
            best_runs, (g.tune_depth, g.deep_depth), max(1, steps(ctx) // 40), SCHEMES
        ),
        "best-loss-curves.png",
        "Training loss of each scheme's best-LR runs: mean over seeds, band ± std",
    )
    report.add(lead_table(outcomes, best, g))


def lead_table(outcomes: list[Outcome], best: dict, g: TunedGrid) -> str:
    """Does Keel's lead grow or shrink with steps? Keel's validation loss minus each baseline's
    (means over seeds, best vs best) at every validation step of the runs."""
    rows = []
    for depth in (g.tune_depth, g.deep_depth):
        curves = {}
        for k in SCHEMES:
            runs = select(outcomes, scheme=k, depth=depth, lr=best[(k, depth)])
            per_step: dict[int, list[float]] = {}
            for o in runs:
                for step, v in zip(*Run(o.record).metric("val_loss"), strict=True):
                    per_step.setdefault(step, []).append(v)
            curves[k] = {s: sum(v) / len(v) for s, v in per_step.items() if len(v) == len(runs)}
        for step in sorted(curves["keel"]):
            gaps = [
                curves["keel"][step] - curves[b][step] if step in curves[b] else math.nan
                for b in BASELINES
            ]
            rows.append((depth, step + 1, *(f"{x:+.4f}" for x in gaps)))
    return (
        "Keel's validation loss minus each baseline's, both at their best LR (mean over seeds; "
        "negative: Keel ahead), at each validation step:\n\n"
        + md_table(("sub-layers", "step", *(f"keel - {b}" for b in BASELINES)), rows)
    )


def loss_vs_lr_figure(ctx: Context, outcomes: list[Outcome]):
    g = grid(ctx)
    fig, axes = panels(2, 5.0, 3.8, sharey=True)
    for ax, depth in zip(axes, (g.tune_depth, g.deep_depth), strict=True):
        for k, scheme in enumerate(SCHEMES):
            lrs = sorted({o.spec.lr for o in select(outcomes, scheme=scheme, depth=depth)})
            ys = [(_seed0(ctx, outcomes, scheme, depth, lr)) for lr in lrs]
            ys = [y if math.isfinite(y) else math.nan for y in ys]  # diverged: no point
            ax.plot(lrs, ys, marker="o", color=f"C{k}", label=scheme)
        ax.set(
            title=f"{depth} sub-layers",
            xlabel="peak learning rate",
            xscale="log",
            ylabel="final validation loss (nats/token)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


TUNED_PROTOCOL = Protocol(
    name="tuned",
    title="Keel vs today's depth fixes, each at its own best LR, trained 4x longer",
    claim="Not a paper claim: does Keel beat Pre-LN, Peri-LN and LayerNorm Scaling when each "
    "has its own best LR, and does its lead grow or shrink with training steps?",
    plan=plan,
    analyse=analyse,
    pending=pending,
)
