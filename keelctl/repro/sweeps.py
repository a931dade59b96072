"""lr-sweep (Table 2) and depth-sweep (Table 3): Keel vs Pre-LN at equal learning rates.

lr-sweep: one depth, each LR of the scale, final validation loss (summary.json: the run's fixed
validation set). depth-sweep: each depth at one LR and a fixed token budget (same steps and batch
at every depth), validation perplexity from `keelctl eval` (every held-out token, rolling
windows) and the bundled lm-eval task's accuracy beside it, both kept in each run's record.
Both schedules: linear warm-up over the first 10% of steps, cosine to min_lr.
Differences of single-seed losses under TIE nats/token are ties.
"""

from __future__ import annotations

from keelctl.repro.figures import mean_curves_figure, series, xy_figure
from keelctl.repro.paper import PAPER_DEPTH_SWEEP, PAPER_LR_SWEEP, PAPER_LR_SWEEP_DEPTH, paper_avg
from keelctl.repro.plan import (
    SCHEMES,
    Context,
    Outcome,
    Progress,
    Protocol,
    RunSpec,
    depth_sweep_specs,
    sweep_spec,
)
from keelctl.repro.readings import TIE, by, final_loss, finite, keel_vs
from keelctl.repro.report import Report, md_table
from keelctl.repro.verdicts import claim, fmt_group
from keelctl.runs import Run

# ---- lr-sweep -------------------------------------------------------------------------------


def plan_lr_sweep(ctx: Context) -> list[RunSpec]:
    sc, depth = ctx.scale, ctx.scale.lr_sweep_depth
    return [
        sweep_spec(ctx, scheme, depth, sc.steps, seed, lr)
        for lr in sc.lrs
        for scheme in SCHEMES
        for seed in ctx.seeds
    ]


def analyse_lr_sweep(
    ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress
) -> None:
    sc = ctx.scale
    progress.report("lr-sweep: reading summaries", progress.total)
    rows = []
    for lr in sc.lrs:
        keel, pre = keel_vs(outcomes, final_loss, lr=lr)
        *paper, said = paper_avg(PAPER_LR_SWEEP, lr)
        said = f"{PAPER_LR_SWEEP_DEPTH} layers, {said}" if said else "no paper number at this LR"
        text = f"LR {lr:g}, {sc.lr_sweep_depth} sub-layers: Keel reaches a lower validation loss"
        report.verdicts.append(claim(f"{text} than Pre-LN", said, keel, pre, "lower", tie=TIE))
        rows.append((f"{lr:g}", fmt_group(keel), fmt_group(pre), *paper))
    report.add(
        f"{sc.lr_sweep_depth} sub-layers, {sc.steps} steps per run, final validation "
        "loss in nats/token (lower is better) beside the paper's lm-eval average at "
        f"{PAPER_LR_SWEEP_DEPTH} layers (higher is better).",
        md_table("LR | keel val loss | pre_ln val loss | paper keel avg | paper pre_ln avg", rows),
    )
    report.figure(
        xy_figure(
            f"Final validation loss vs LR ({sc.lr_sweep_depth} sub-layers)",
            "peak learning rate",
            "validation loss (nats/token)",
            series(outcomes, final_loss, "lr", list(sc.lrs), SCHEMES),
        ),
        "val-loss-vs-lr.png",
        "Validation loss against learning rate (mean ± std)",
    )


# ---- depth-sweep ----------------------------------------------------------------------------


def _eval(o: Outcome) -> dict:
    return Run(o.record).measure("eval")


def val_nll(o: Outcome) -> float:
    return finite(_eval(o)["nll"])


def task_acc(task: str):
    return lambda o: finite(_eval(o)["tasks"].get(task, {}).get("acc"))


def analyse_depth_sweep(
    ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress
) -> None:
    sc = ctx.scale
    report.verdicts.extend(_depth_claims(ctx, outcomes))
    report.add(*_depth_table(ctx, outcomes))
    figures = {"val-loss-vs-depth.png": (val_nll, "validation loss (nats/token)")}
    figures |= {f"{t}-acc-vs-depth.png": (task_acc(t), f"{t} accuracy") for t in sc.tasks}
    for filename, (value, ylabel) in figures.items():
        points = series(outcomes, value, "depth", list(sc.depths), SCHEMES)
        title = f"{ylabel} vs depth, fixed token budget"
        report.figure(
            xy_figure(title, "depth (sub-layers)", ylabel, points),
            filename,
            f"{ylabel} against depth (mean ± std over seeds)",
        )
    report.figure(
        mean_curves_figure(outcomes, sc.depths, max(1, sc.steps // 40), SCHEMES),
        "loss-curves.png",
        "Training loss per depth: mean over seeds, band ± std",
    )
    limit = f" --limit {sc.task_limit}" if sc.task_limit else ""
    ctx.commands.append(
        f"keelctl eval RUN_DIR --batch-size {sc.eval_batch_size} --tasks {','.join(sc.tasks)}"
        f"{limit}   # for each run; kept in records/RUN/eval.json"
    )


def _depth_claims(ctx: Context, outcomes: list[Outcome]) -> list:
    """Keel below Pre-LN at each depth; Keel's gain larger at the deepest than the shallowest."""
    sc, out = ctx.scale, []
    for depth in sc.depths:
        said = paper_avg(PAPER_DEPTH_SWEEP, depth)[2] or "no paper number at this depth"
        text = f"{depth} sub-layers: Keel reaches a lower validation loss (log-perplexity) than"
        keel, pre = keel_vs(outcomes, val_nll, depth=depth)
        out.append(claim(f"{text} Pre-LN", said, keel, pre, "lower", tie=TIE))
    if len(sc.depths) > 1:
        lo, hi = sc.depths[0], sc.depths[-1]

        def gains(depth: int) -> list[float]:
            pairs = [keel_vs(outcomes, val_nll, depth=depth, seed=seed) for seed in ctx.seeds]
            return [p - k for keel, pre in pairs for k in keel for p in pre]

        text = f"Keel's advantage (Pre-LN loss - Keel loss, per seed) is larger at {hi} than at"
        said = "avg-score gain +1.7 at 64 layers, +3.0 at 1024"
        names = (f"gain@{hi}", f"gain@{lo}")
        out.append(
            claim(f"{text} {lo} sub-layers", said, gains(hi), gains(lo), "higher", TIE, names=names)
        )
    return out


def _depth_table(ctx: Context, outcomes: list[Outcome]) -> tuple[str, str]:
    sc, rows = ctx.scale, []
    for depth in sc.depths:
        accs = [
            fmt_group(by(outcomes, task_acc(task), scheme=scheme, depth=depth), ".3f")
            for task in sc.tasks
            for scheme in SCHEMES[::-1]
        ]
        keel, pre = keel_vs(outcomes, val_nll, depth=depth)
        paper = paper_avg(PAPER_DEPTH_SWEEP, depth)[:2]
        rows.append((depth, fmt_group(keel), fmt_group(pre), *accs, *paper))
    limit = f"first {sc.task_limit} documents" if sc.task_limit else "all documents"
    accs = [f"{scheme} {task} acc" for task in sc.tasks for scheme in SCHEMES[::-1]]
    columns = [
        "sub-layers | keel val loss | pre_ln val loss",
        *accs,
        "paper keel avg | paper pre_ln avg",
    ]
    return (
        f"Fixed budget: {sc.steps} steps at every depth, LR {sc.lr:g} for both schemes. "
        "Validation loss = `keelctl eval` held-out NLL (nats/token) over the run's whole "
        f"validation split; accuracy = lm-eval's acc on the bundled task(s) ({limit}; chance "
        "1/3 for keel_nextline); the paper's columns are lm-eval averages over 14 tasks.",
        md_table(" | ".join(columns), rows),
    )


LR_SWEEP_PROTOCOL = Protocol(
    name="lr-sweep",
    title="Keel vs Pre-LN at equal learning rates (Table 2)",
    claim="At every learning rate of the sweep Keel trains to a better model than Pre-LN "
    "(paper Table 2: higher average score at 1.5e-3, 3e-3 and 6e-3, 512 layers).",
    plan=plan_lr_sweep,
    analyse=analyse_lr_sweep,
)
DEPTH_SWEEP_PROTOCOL = Protocol(
    name="depth-sweep",
    title="Keel vs Pre-LN over depth at a fixed token budget (Table 3)",
    claim="Keel beats Pre-LN at every depth, and by more at greater depth (paper Table 3).",
    plan=depth_sweep_specs,
    analyse=analyse_depth_sweep,
    measures=("eval",),
)
