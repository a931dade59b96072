"""scale-map: where each of four claims holds, over a grid of depth (sub-layers) x training steps.

Every cell (depth, steps) has its own runs, each trained from scratch with its schedule over
`steps` (not a checkpoint of a longer run): keel, pre_ln and post_ln at depth-sweep's LR (warm-up
over steps // 10, cosine to min_lr), and keel and pre_ln LR ramps from 0 to max-lr's peak over
`steps` (max-lr's recipe, early stop and detector, its windows scaled to the ramp). Cells whose
depth x steps (sub-layer-steps) exceed the scale's map_max_cost get no ramps; up to
map_equal_lr_max_cost they still get the runs at depth-sweep's LR (repro tuned's equal-LR runs),
beyond it none. The figures hatch a cell that has no runs for the claim. The column at
depth-sweep's step count is depth-sweep's and grad-flow's runs (same recipes, same run dirs and
records). Per cell and claim:

  beats       final validation loss (summary.json), Keel lower than Pre-LN; single-seed tie
              0.01 nats/token. Interval rule (verdicts above).
  higher-lr   max LR under the ramp (max-lr's detector; the slow and plateau rules' reference is
              the lowest loss of Keel's and Pre-LN's ramps at the same depth, seed and ramp),
              Keel higher than Pre-LN; tie one LR step of the ramp. Interval rule.
  grad-level  |log10 stream-gradient ratio|, sub-layer 2 / top, at the last grads.csv step
              (grad-flow's number; a diverged run's is not finite), Keel lower than Post-LN; tie 10%
              (0.041 decades). Interval rule. Also checked at the trains cells (below).
  trains      a run trains when it did not diverge and its final validation loss is below the
              scale's unigram level (Scale.unigram_nll: the scored validation tokens' unigram
              entropy, what a model that learned only byte frequencies reaches; ln(vocab_size),
              the uniform level, where a scale has none). "reproduced" when every Keel seed
              trains and every Post-LN seed fails; "opposite" when every Post-LN seed trains and
              every Keel seed fails; "not at this scale" otherwise; "no data yet" when a side
              has no run. Checked in every cell and also at map_trains_depths x
              map_trains_steps (Keel and Post-LN runs only there).

A claim holds first in its reproduced cell with the fewest sub-layer-steps (depth x steps),
ties to the shallower; the report says so per claim, with the count of reproduced cells and the
cells that have no data yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from keelctl.errors import KeelError
from keelctl.repro.callbacks import StopWhenDiverged
from keelctl.repro.divergence import DivergenceRules
from keelctl.repro.paper import PAPER_GRAD_FLOW, PAPER_MAX_LR
from keelctl.repro.plan import Context, Outcome, Progress, Protocol, RunSpec, ramp_spec, sweep_spec
from keelctl.repro.readings import (
    GRAD_TIE,
    TIE,
    by,
    detect_ramps,
    final_loss,
    grad_level_after,
    keel_vs,
    read_curve,
)
from keelctl.repro.report import Report, md_table
from keelctl.repro.scale_map_grid import (
    Cell,
    cost,
    map_figure,
    order,
    smallest_sentence,
    trains_verdict,
)
from keelctl.repro.scales import Scale
from keelctl.repro.verdicts import NO_DATA, Verdict, claim, fmt_group, mean_std

SWEEP_SCHEMES = ("keel", "pre_ln", "post_ln")
RAMP_SCHEMES = ("keel", "pre_ln")
TRAINS_SCHEMES = ("keel", "post_ln")


# ---- plan -----------------------------------------------------------------------------------


def grid(sc: Scale) -> list[Cell]:
    """Every depth x steps pair of the map, cheapest first."""
    if not sc.map_depths or not sc.map_steps:
        raise KeelError(f"scale {sc.name} has no scale map (map_depths, map_steps); use cpu")
    return order((d, s) for d in sc.map_depths for s in sc.map_steps)


def within(sc: Scale, cell: Cell) -> bool:
    return sc.map_max_cost is None or cost(cell) <= sc.map_max_cost


def equal_lr_only(sc: Scale, cell: Cell) -> bool:
    limit = sc.map_equal_lr_max_cost
    return not within(sc, cell) and limit is not None and cost(cell) <= limit


def map_cells(sc: Scale) -> list[Cell]:
    """The grid's cells within the scale's budget (all four claims), cheapest first."""
    return [c for c in grid(sc) if within(sc, c)]


def equal_lr_cells(sc: Scale) -> list[Cell]:
    """The grid's cells over map_max_cost but within map_equal_lr_max_cost: the equal-LR runs
    only, no ramps, so every claim but higher-lr is judged there."""
    return [c for c in grid(sc) if equal_lr_only(sc, c)]


def beyond(sc: Scale) -> list[Cell]:
    """The grid's cells with no run at all: over both budgets."""
    return [c for c in grid(sc) if not within(sc, c) and not equal_lr_only(sc, c)]


def trains_cells(sc: Scale) -> list[Cell]:
    """The extra cells of the "trains" claim (Keel and Post-LN only; "grad-level" is judged
    there too), cheapest first."""
    extra = [(d, s) for d in sc.map_trains_depths for s in sc.map_trains_steps]
    return order(c for c in extra if c not in map_cells(sc) + equal_lr_cells(sc))


def plan(ctx: Context) -> list[RunSpec]:
    """Cheapest cells first, seed before scheme: a sweep cut short leaves whole small cells.
    Every run at depth-sweep's LR is depth-sweep's at its steps, and every ramp max-lr's at its
    ramp length (same run dirs)."""
    specs, lr = [], ctx.scale.lr
    for depth, steps in map_cells(ctx.scale):
        for seed in ctx.seeds:
            specs += [sweep_spec(ctx, k, depth, steps, seed, lr) for k in SWEEP_SCHEMES]
            specs += [ramp_spec(ctx, k, depth, seed, steps) for k in RAMP_SCHEMES]
    for depth, steps in trains_cells(ctx.scale):
        for seed in ctx.seeds:
            specs += [sweep_spec(ctx, k, depth, steps, seed, lr) for k in TRAINS_SCHEMES]
    for depth, steps in equal_lr_cells(ctx.scale):  # the costliest last
        for seed in ctx.seeds:
            specs += [sweep_spec(ctx, k, depth, steps, seed, lr) for k in SWEEP_SCHEMES]
    return specs


def is_ramp(spec: RunSpec) -> bool:
    return spec.name.startswith("maxlr-")


def callbacks(ctx: Context):
    """max-lr's early stop on the ramps, with the detector's windows scaled to each ramp."""

    def for_spec(spec: RunSpec) -> list:
        rules = DivergenceRules.for_ramp(spec.steps)
        return [StopWhenDiverged(rules, spec.steps)] if is_ramp(spec) else []

    return for_spec


# ---- verdicts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapClaim:
    key: str  # the figure's file name
    text: str
    paper: str
    baseline: str
    measure: str  # what the number is, for the table's caption
    # the interval rule's direction and the numbers' format ("trains" has its own rule)
    better: Literal["higher", "lower"] = "lower"
    fmt: str = ".3g"


CLAIMS = (
    MapClaim(
        "beats",
        "Keel reaches a lower final validation loss than Pre-LN",
        "Table 3: higher average score at every depth, 64..1024 layers",
        "pre_ln",
        "final validation loss (nats/token, summary.json)",
        fmt=".3f",
    ),
    MapClaim(
        "higher-lr",
        "Keel tolerates a higher LR than Pre-LN",
        "Table 1: keel "
        + ", ".join(
            f"{v['keel']:.3g} vs pre_ln {v['pre_ln']:.3g} at {d}" for d, v in PAPER_MAX_LR.items()
        )
        + " layers",
        "pre_ln",
        "max LR under the ramp (last LR before the detector's divergence)",
        better="higher",
    ),
    MapClaim(
        "grad-level",
        "Keel's stream gradient holds level better than Post-LN's after training",
        PAPER_GRAD_FLOW,
        "post_ln",
        "|log10 stream-gradient ratio|, sub-layer 2 / top, last grads.csv step (0 = level)",
    ),
    MapClaim(
        "trains",
        "Keel trains where Post-LN fails",
        "Keel trains at 1024 layers (Table 3); Post-LN's bottom gradient shrinks ~2^(-L/2)",
        "post_ln",
        "runs that trained (not diverged, final validation loss below the unigram level)",
    ),
)


# --set keys that leave the scored validation tokens as they are
_SAME_TOKENS = ("data.cache_dir=", "data.num_workers=", "data.workers=")


def unigram_level(ctx: Context, outcomes: list[Outcome]) -> tuple[float, str]:
    """The "trains" threshold and where it comes from: the scale's measured unigram level,
    unless there is none or a --set data.* key may have changed the validation tokens."""
    changed = [o for o in ctx.overrides if o.startswith("data.") and not o.startswith(_SAME_TOKENS)]
    if ctx.scale.unigram_nll is not None and not changed:
        return ctx.scale.unigram_nll, "Scale.unigram_nll, measured by scripts/unigram_nll.py"
    model = outcomes[0].spec.recipe.model if outcomes else None
    vocab = model.vocab_size if model else ctx.scale.recipe["model"]["vocab_size"]
    why = f"--set {changed[0]} may change the data" if changed else "no measured unigram level"
    return math.log(vocab), f"ln(vocab_size {vocab}), the uniform level: {why}"


@dataclass(frozen=True)
class CellResult:
    verdict: Verdict
    note: str  # the figure's annotation: the two means (or counts) and n
    keel: str  # the table's columns
    base: str


def _interval_cells(cells, mc: MapClaim, outcomes, value, tie) -> dict:
    """Per cell, the interval rule on value(run) of Keel's and the baseline's runs there;
    tie(cell) is the single-seed tie band."""
    out, fmt = {}, mc.fmt

    def mean(xs: list[float]) -> str:
        return f"{mean_std(xs)[0]:{fmt}}" if xs else "-"

    for cell in cells:
        a, b = keel_vs(outcomes, value, mc.baseline, depth=cell[0], steps=cell[1])
        names = ("keel", mc.baseline)
        v = claim(_claim_text(cell, mc), mc.paper, a, b, mc.better, tie(cell), fmt, names)
        note = f"{mean(a)} vs {mean(b)}\nn={len(a)}/{len(b)}"
        out[cell] = CellResult(v, note, fmt_group(a, fmt), fmt_group(b, fmt))
    return out


def _claim_text(cell: Cell, mc: MapClaim) -> str:
    return f"{cell[0]} sub-layers, {cell[1]} steps: {mc.text}"


def _losses(values: list[float]) -> str:
    """The finite final losses (mean ± std), and how many runs diverged (an infinite loss)."""
    finite = [v for v in values if math.isfinite(v)]
    text = f"loss {fmt_group(finite, '.3g')}"
    return text + (f", {len(values) - len(finite)} diverged" if len(finite) < len(values) else "")


def _trains_cells(cells, mc: MapClaim, outcomes, level: float) -> dict:
    out = {}
    for cell in cells:
        at = dict(depth=cell[0], steps=cell[1])
        loss = {k: by(outcomes, final_loss, scheme=k, **at) for k in ("keel", mc.baseline)}
        ok = {k: [x < level for x in v] for k, v in loss.items()}  # nan (diverged): fails
        verdict = trains_verdict(ok["keel"], ok[mc.baseline])
        text = {k: f"{sum(ok[k])} of {len(ok[k])} train ({_losses(v)})" for k, v in loss.items()}
        rule = f"trains: not diverged and loss < {level:.4g}; " + (
            "a side has no finished run yet"
            if verdict == NO_DATA
            else f"reproduced iff every keel seed trains and every {mc.baseline} seed fails"
        )
        ours = f"keel {text['keel']} vs {mc.baseline} {text[mc.baseline]}"
        v = Verdict(_claim_text(cell, mc), mc.paper, ours, verdict, rule)
        counts = [f"{sum(ok[k])}/{len(ok[k])}" for k in ("keel", mc.baseline)]
        note = f"{counts[0]} vs {counts[1]}\ntrain"
        out[cell] = CellResult(v, note, text["keel"], text[mc.baseline])
    return out


# ---- analysis -------------------------------------------------------------------------------


def max_lrs(ramps: list[Outcome]) -> dict:
    """Each ramp run's max LR (run dir -> LR), its divergence detected against the other
    scheme's ramp at the same depth, seed and ramp length (max-lr's code path)."""
    curves = [read_curve(o) for o in ramps]
    detect_ramps(curves, DivergenceRules.for_ramp)
    return {c.spec.run_dir: c.max_lr for c in curves}


def analyse(ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress) -> None:
    sc = ctx.scale
    cells = map_cells(sc)
    swept = cells + equal_lr_cells(sc)  # cells with the equal-LR runs (higher-lr: `cells` only)
    # the trains cells' Keel and Post-LN runs record gradients too: the 1024-deep check
    post_ln_cells = swept + trains_cells(sc)
    runs = [o for o in outcomes if not is_ramp(o.spec)]
    ramps = [o for o in outcomes if is_ramp(o.spec)]
    lrs = max_lrs(ramps)
    progress.report("scale-map: max LRs", progress.done + len(ramps))
    level, source = unigram_level(ctx, outcomes)

    beats, higher, grads, trains = CLAIMS
    results = {
        beats: _interval_cells(swept, beats, runs, final_loss, lambda c: TIE),
        higher: _interval_cells(  # tie: one LR step of the cell's ramp
            cells, higher, ramps, lambda o: lrs[o.spec.run_dir], lambda c: sc.max_lr_peak / c[1]
        ),
        grads: _interval_cells(post_ln_cells, grads, runs, grad_level_after, lambda c: GRAD_TIE),
        trains: _trains_cells(post_ln_cells, trains, runs, level),
    }
    progress.report("scale-map: verdicts", progress.total)
    report.add(_setup_text(ctx, level, source))
    report.add(
        "\n".join(
            f"- {smallest_sentence(mc.text, {c: r.verdict.verdict for c, r in res.items()})}"
            for mc, res in results.items()
        )
    )
    for mc, res in results.items():
        report.verdicts.extend(r.verdict for r in res.values())
        report.add(f"### {mc.text}")
        report.figure(
            map_figure(
                f"{mc.text}\n(cell: keel vs {mc.baseline}; {mc.measure.split(' (')[0]})",
                {c: (r.verdict.verdict, r.note) for c, r in res.items()},
            ),
            f"scale-map-{mc.key}.png",
            f"{mc.text}: verdict per cell, depth (sub-layers) x training steps",
        )
        rows = [
            (f"{d} x {s}", d * s, r.keel, r.base, f"**{r.verdict.verdict}**")
            for (d, s), r in res.items()
        ]
        report.add(
            f"Number per run: {mc.measure}.",
            md_table(
                ("sub-layers x steps", "sub-layer-steps", "keel", mc.baseline, "verdict"), rows
            ),
        )


def _setup_text(ctx: Context, level: float, source: str) -> str:
    sc = ctx.scale

    def named(cells: list[Cell]) -> str:
        return ", ".join(f"{d} x {s}" for d, s in cells) or "none"

    equal_lr = ""
    if equal_lr_cells(sc):
        equal_lr = (
            f" Cells up to {sc.map_equal_lr_max_cost} sub-layer-steps get the runs at LR "
            f"{sc.lr:g} only, no ramps, so no higher-lr verdict (hatched there): "
            f"{named(equal_lr_cells(sc))}; `repro tuned` plans the same runs."
        )
    return (
        f"Grid: depths {', '.join(map(str, sc.map_depths))} sub-layers x "
        f"{', '.join(map(str, sc.map_steps))} training steps; a cell is planned when depth x "
        f"steps is at most {sc.map_max_cost} sub-layer-steps.{equal_lr} **Beyond this scale's "
        f"budget, not planned (hatched): {named(beyond(sc))}.** Per cell and seed: keel, pre_ln "
        f"and post_ln at LR {sc.lr:g} (warm-up over 10% of the cell's steps, cosine to min_lr "
        "over them: each cell is its own run, not a checkpoint of a longer one), and keel and "
        f"pre_ln LR ramps from 0 to {sc.max_lr_peak:g} over the cell's steps. "
        + (
            f"The {sc.steps}-step column is depth-sweep's and grad-flow's runs. "
            if sc.steps in sc.map_steps
            else ""
        )
        + "Extra cells of the 'trains' and 'grad-level' claims (keel and "
        f"post_ln only): {named(trains_cells(sc))}. A run trains when it did not diverge and its "
        f"final validation loss is below {level:.4g} nats/token ({source}). Cell annotations: "
        "keel's mean vs the baseline's, n = runs per side."
    )


SCALE_MAP_PROTOCOL = Protocol(
    name="scale-map",
    title="where each claim holds, over depth x training steps",
    claim="Keel beats Pre-LN, tolerates a higher LR than Pre-LN, keeps its gradient level where "
    "Post-LN's vanishes, and trains where Post-LN fails; each mapped over depth (sub-layers) x "
    "training steps to the smallest cell where it holds.",
    plan=plan,
    analyse=analyse,
    callbacks=callbacks,
)
