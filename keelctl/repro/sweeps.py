"""lr-sweep (Table 2) and depth-sweep (Table 3): Keel vs Pre-LN at equal learning rates.

lr-sweep: one depth, each LR of the scale, final validation loss (summary.json: the run's fixed
validation set). depth-sweep: each depth at one LR and a fixed token budget (same steps and batch
at every depth), validation perplexity from `keelctl eval` (every held-out token, rolling
windows) and the bundled lm-eval task's accuracy beside it, both kept in each run's record.
Both schedules: linear warm-up over the first 10% of steps, cosine to min_lr.
Differences of single-seed losses under TIE nats/token are ties.
"""

from __future__ import annotations

import math

from keelctl.analysis.plots import new_figure
from keelctl.repro import paper
from keelctl.repro.context import Context, Protocol
from keelctl.repro.measures import finite
from keelctl.repro.plan import Outcome, Progress, RunSpec
from keelctl.repro.records import load_measure
from keelctl.repro.report import Report, md_table
from keelctl.repro.verdicts import claim, fmt_group, mean_std
from keelctl.runs import METRICS_CSV
from keelctl.train.curves import read_metric

SCHEMES = ("pre_ln", "keel")
TIE = 0.01  # nats/token


def label(scheme: str, depth: int, lr: float, seed: int) -> str:
    """One name for a sweep run, so lr-sweep and depth-sweep share their common runs."""
    return f"{scheme}-L{depth}-lr{lr:g}-s{seed}"


def sweep_label(scheme: str, depth: int, lr: float, seed: int, steps: int, sweep_steps: int) -> str:
    """A sweep run over `steps`; at the sweep's own steps it is the sweep's run (same name), so
    scale-map and tuned share the runs they have in common with each other and depth-sweep."""
    name = label(scheme, depth, lr, seed)
    return name if steps == sweep_steps else f"{scheme}-L{depth}-lr{lr:g}-steps{steps}-s{seed}"


def train_spec(
    ctx: Context,
    scheme: str,
    depth: int,
    seed: int,
    lr: float,
    steps: int,
    label: str,
    **sections: dict,
) -> RunSpec:
    """A sweep run: warm-up 10% of steps, then cosine; `sections` add recipe keys (e.g.
    model=dict(alpha=1.0), design's variants)."""
    recipe = ctx.recipe(
        scheme=scheme,
        depth=depth,
        seed=seed,
        lr=lr,
        steps=steps,
        warmup_steps=max(1, steps // 10),
        **sections,
    )
    return ctx.spec(label, recipe)


def depth_sweep_specs(ctx: Context, schemes=SCHEMES) -> list[RunSpec]:
    """The depth-sweep's runs; grad-flow and redundancy plan the same ones (and share them)."""
    sc = ctx.scale
    return [
        train_spec(ctx, scheme, depth, seed, sc.lr, sc.steps, label(scheme, depth, sc.lr, seed))
        for depth in sc.depths
        for seed in ctx.seeds  # seed before scheme: a sweep cut short leaves complete pairs
        for scheme in schemes
    ]


def by(outcomes: list[Outcome], value, **tags) -> list[float]:
    """value(outcome) of the outcomes whose spec matches every tag (scheme=..., depth=...)."""
    return [value(o) for o in outcomes if all(getattr(o.spec, k) == v for k, v in tags.items())]


def final_loss(o: Outcome) -> float:
    """The final validation loss; +inf for a diverged run (worse than any finite loss, as the
    verdict rule reads it), nan where a finished run has none."""
    if o.summary.get("status") == "diverged":
        return math.inf
    loss = o.summary.get("final_val_loss")
    return math.nan if loss is None else loss


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


def _series(outcomes, value, key: str, keys: list) -> dict:
    out = {}
    for scheme in SCHEMES:
        stats = [
            mean_std(by(outcomes, value, scheme=scheme, **{key: k}) or [math.nan]) for k in keys
        ]
        out[scheme] = (keys, [m for m, _ in stats], [s for _, s in stats])
    return out


# ---- lr-sweep -------------------------------------------------------------------------------


def plan_lr_sweep(ctx: Context) -> list[RunSpec]:
    sc = ctx.scale
    return [
        train_spec(
            ctx,
            scheme,
            sc.lr_sweep_depth,
            seed,
            lr,
            sc.lr_sweep_steps,
            label(scheme, sc.lr_sweep_depth, lr, seed),
        )
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
        keel, pre = (
            by(outcomes, final_loss, scheme="keel", lr=lr),
            by(outcomes, final_loss, scheme="pre_ln", lr=lr),
        )
        scores = paper.LR_SWEEP.get(lr)
        paper_text = (
            f"{paper.LR_SWEEP_DEPTH} layers, avg score keel {scores['keel']} vs "
            f"pre_ln {scores['pre_ln']}"
            if scores
            else "no paper number at this LR"
        )
        report.verdicts.append(
            claim(
                f"LR {lr:g}, {sc.lr_sweep_depth} sub-layers: Keel reaches a lower validation loss "
                "than Pre-LN",
                paper_text,
                keel,
                pre,
                "lower",
                tie=TIE,
            )
        )
        rows.append(
            (
                f"{lr:g}",
                fmt_group(keel),
                fmt_group(pre),
                paper.paper_scores(paper.LR_SWEEP, lr, "keel"),
                paper.paper_scores(paper.LR_SWEEP, lr, "pre_ln"),
            )
        )
    report.add(
        f"{sc.lr_sweep_depth} sub-layers, {sc.lr_sweep_steps} steps per run, final validation "
        "loss in nats/token (lower is better) beside the paper's lm-eval average at "
        f"{paper.LR_SWEEP_DEPTH} layers (higher is better).",
        md_table(
            ("LR", "keel val loss", "pre_ln val loss", "paper keel avg", "paper pre_ln avg"), rows
        ),
    )
    report.figure(
        xy_figure(
            f"Final validation loss vs LR ({sc.lr_sweep_depth} sub-layers)",
            "peak learning rate",
            "validation loss (nats/token)",
            _series(outcomes, final_loss, "lr", list(sc.lrs)),
        ),
        "val-loss-vs-lr.png",
        "Validation loss against learning rate (mean ± std)",
    )


# ---- depth-sweep ----------------------------------------------------------------------------


def _eval(o: Outcome) -> dict:
    return load_measure(o.record, "eval")


def val_nll(o: Outcome) -> float:
    return finite(_eval(o)["nll"])


def task_acc(task: str):
    return lambda o: finite(_eval(o)["tasks"].get(task, {}).get("acc"))


def analyse_depth_sweep(
    ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress
) -> None:
    sc = ctx.scale
    rows = []
    for depth in sc.depths:
        keel, pre = (
            by(outcomes, val_nll, scheme="keel", depth=depth),
            by(outcomes, val_nll, scheme="pre_ln", depth=depth),
        )
        scores = paper.DEPTH_SWEEP.get(depth)
        report.verdicts.append(
            claim(
                f"{depth} sub-layers: Keel reaches a lower validation loss (log-perplexity) than "
                "Pre-LN",
                f"avg score keel {scores['keel']} vs pre_ln {scores['pre_ln']}"
                if scores
                else "no paper number at this depth",
                keel,
                pre,
                "lower",
                tie=TIE,
            )
        )
        accs = [
            fmt_group(by(outcomes, task_acc(task), scheme=scheme, depth=depth), ".3f")
            for task in sc.tasks
            for scheme in SCHEMES[::-1]
        ]
        rows.append(
            (
                depth,
                fmt_group(keel),
                fmt_group(pre),
                *accs,
                paper.paper_scores(paper.DEPTH_SWEEP, depth, "keel"),
                paper.paper_scores(paper.DEPTH_SWEEP, depth, "pre_ln"),
            )
        )
    if len(sc.depths) > 1:
        lo, hi = sc.depths[0], sc.depths[-1]

        def gains(depth: int) -> list[float]:
            return [
                p - k
                for seed in ctx.seeds
                for k in by(outcomes, val_nll, scheme="keel", depth=depth, seed=seed)
                for p in by(outcomes, val_nll, scheme="pre_ln", depth=depth, seed=seed)
            ]

        report.verdicts.append(
            claim(
                f"Keel's advantage (Pre-LN loss - Keel loss, per seed) is larger at {hi} than at "
                f"{lo} sub-layers",
                "avg-score gain +1.7 at 64 layers, +3.0 at 1024",
                gains(hi),
                gains(lo),
                "higher",
                tie=TIE,
                names=(f"gain@{hi}", f"gain@{lo}"),
            )
        )
    limit = f"first {sc.task_limit} documents" if sc.task_limit else "all documents"
    report.add(
        f"Fixed budget: {sc.steps} steps at every depth, LR {sc.lr:g} for both schemes. "
        "Validation loss = `keelctl eval` held-out NLL (nats/token) over the run's whole "
        f"validation split; accuracy = lm-eval's acc on the bundled task(s) ({limit}; chance "
        "1/3 for keel_nextline); the paper's columns are lm-eval averages over 14 tasks.",
        md_table(
            (
                "sub-layers",
                "keel val loss",
                "pre_ln val loss",
                *(f"{scheme} {task} acc" for task in sc.tasks for scheme in SCHEMES[::-1]),
                "paper keel avg",
                "paper pre_ln avg",
            ),
            rows,
        ),
    )
    series = {"val-loss-vs-depth.png": (val_nll, "validation loss (nats/token)")}
    series |= {f"{t}-acc-vs-depth.png": (task_acc(t), f"{t} accuracy") for t in sc.tasks}
    for filename, (value, ylabel) in series.items():
        report.figure(
            xy_figure(
                f"{ylabel} vs depth, fixed token budget",
                "depth (sub-layers)",
                ylabel,
                _series(outcomes, value, "depth", list(sc.depths)),
            ),
            filename,
            f"{ylabel} against depth (mean ± std over seeds)",
        )
    report.figure(
        mean_curves_figure(outcomes, sc.depths, smooth=max(1, sc.steps // 40)),
        "loss-curves.png",
        "Training loss per depth: mean over seeds, band ± std",
    )
    ctx.commands.append(
        "keelctl eval RUN_DIR --batch-size "
        f"{sc.eval_batch_size} --tasks {','.join(sc.tasks)}"
        + (f" --limit {sc.task_limit}" if sc.task_limit else "")
        + "   # for each run; kept in records/RUN/eval.json"
    )


def mean_curves_figure(outcomes: list[Outcome], depths, smooth: int, schemes=SCHEMES):
    """One panel per depth: each scheme's smoothed training loss, mean over its seeds with a
    ± std band (runs that stopped early end the band where the shortest run ends)."""
    import numpy as np

    from keelctl.repro.divergence import smoothed

    fig = new_figure(4.5 * len(depths), 3.8)
    axes = fig.subplots(1, len(depths), squeeze=False, sharey=True)[0]
    for ax, depth in zip(axes, depths, strict=True):
        for k, scheme in enumerate(schemes):
            curves = [
                read_metric(o.record / METRICS_CSV, "train_loss")
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


LR_SWEEP = Protocol(
    name="lr-sweep",
    title="Keel vs Pre-LN at equal learning rates (Table 2)",
    claim="At every learning rate of the sweep Keel trains to a better model than Pre-LN "
    "(paper Table 2: higher average score at 1.5e-3, 3e-3 and 6e-3, 512 layers).",
    plan=plan_lr_sweep,
    analyse=analyse_lr_sweep,
)
DEPTH_SWEEP = Protocol(
    name="depth-sweep",
    title="Keel vs Pre-LN over depth at a fixed token budget (Table 3)",
    claim="Keel beats Pre-LN at every depth, and by more at greater depth (paper Table 3).",
    plan=depth_sweep_specs,
    analyse=analyse_depth_sweep,
    measures=("eval",),
)
