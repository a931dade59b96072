"""hops: does depth, and Keel's way of training it, buy multi-hop accuracy at this scale?

Keel and Pre-LN at the scale's depths (cpu, gpu: 16, 64, 256 sub-layers), each seed, trained
as depth-sweep's runs (same LR, steps, warm-up) on the generated variable-tracking programs
mixed with the scale's corpus (data.corpus builtin:hops-N+python-stdlib: N documents of
keelctl/data/hops.py's sessions first, then the stdlib, within data.max_bytes). The training
itself scores the bundled tasks keel_hops_k1..k4 after its last step (trainer.eval_every =
steps: the in-training eval, keelctl/train/evaluation.py), so the measurement is the last
eval/keel_hops_kK/acc row of each run's metrics.csv (kept in its record). Accuracy is of the
printed digit among 10 (chance 0.1), on HOPS_LIMIT items per hop count; the eval items are
never in the training corpus. Claims, per hop count: at each depth, Keel's accuracy above
Pre-LN's; and for Keel, the deepest depth's accuracy above the shallowest's. Accuracy
differences under TIE are ties.
"""

from __future__ import annotations

import math

from keelctl.repro.figures import panels
from keelctl.repro.paper import PAPER_HOPS
from keelctl.repro.plan import SCHEMES, Context, Outcome, Progress, Protocol, RunSpec, train_spec
from keelctl.repro.readings import diverged, final_loss, select
from keelctl.repro.report import Report, md_table
from keelctl.repro.verdicts import claim, fmt_group, mean_std
from keelctl.runs import METRICS_CSV, Run

HOPS = (1, 2, 3, 4)
TASKS = tuple(f"keel_hops_k{k}" for k in HOPS)
HOPS_DOCUMENTS = 8000  # about 10 MB of sessions: half of the cpu scale's 20 MB of text
HOPS_LIMIT = {"micro": 4}  # items per hop count at each scale (default: all 200)
TIE = 0.02  # accuracy: about 4 of 200 items


CORPUS = f"builtin:hops-{HOPS_DOCUMENTS}+python-stdlib"


def plan(ctx: Context) -> list[RunSpec]:
    sc = ctx.scale
    trainer = dict(eval_every=sc.steps, eval_tasks=list(TASKS), eval_limit=HOPS_LIMIT.get(sc.name))
    data = dict(corpus=CORPUS, max_bytes=20_000_000)
    sections = dict(data=data, trainer=trainer)

    def spec(scheme: str, depth: int, seed: int) -> RunSpec:
        name = f"hops-{scheme}-L{depth}-s{seed}"
        return train_spec(ctx, scheme, depth, seed, sc.lr, sc.steps, name, **sections)

    # seed before scheme: a sweep cut short leaves complete pairs
    return [spec(k, depth, seed) for depth in sc.depths for seed in ctx.seeds for k in SCHEMES]


def hop_accuracy(o: Outcome) -> dict[int, float]:
    """{hops: accuracy} of the run's last in-training eval; nan where it has none (a
    diverged run, or an eval that failed)."""
    run = Run(o.record)
    if not run.has(METRICS_CSV) or diverged(o):
        return dict.fromkeys(HOPS, math.nan)
    scores = {k: run.metric(f"eval/keel_hops_k{k}/acc")[1] for k in HOPS}
    return {k: values[-1] if values else math.nan for k, values in scores.items()}


def analyse(ctx: Context, outcomes: list[Outcome], report: Report, progress: Progress) -> None:
    sc = ctx.scale
    progress.report("hops: reading records", progress.total)
    acc = {}  # (scheme, depth) -> hops -> accuracies, one per recorded seed
    rows = []
    for depth in sc.depths:
        for scheme in SCHEMES:
            runs = select(outcomes, scheme=scheme, depth=depth)
            scores = [hop_accuracy(o) for o in runs]
            acc[scheme, depth] = {k: [s[k] for s in scores] for k in HOPS}
            accs = [fmt_group(acc[scheme, depth][k], ".3f") for k in HOPS]
            loss = fmt_group([final_loss(o) for o in runs], ".3f")
            rows.append((scheme, depth, f"{len(runs)}/{len(ctx.seeds)}", *accs, loss))
    limit = HOPS_LIMIT.get(sc.name, 200)
    corpora = sorted({o.spec.recipe.data.corpus for o in outcomes} or {CORPUS})
    corpora_text = ", ".join(f"`{c}`" for c in corpora)
    report.add(
        f"Accuracy of the printed digit among 10 (chance 0.1) on {limit} items per hop count, "
        f"after the last of {sc.steps} steps; mean ± std over seeds; n = recorded seeds / "
        f"planned; depth in sub-layers; corpus {corpora_text}; val loss = final validation loss "
        "on that corpus (nats/token).",
        md_table(("scheme", "sub-layers", "n", *(f"acc k={k}" for k in HOPS), "val loss"), rows),
    )
    deep, shallow = max(sc.depths), min(sc.depths)
    for k in HOPS:
        for depth in sc.depths:
            text = f"{depth} sub-layers, {k} hop(s): Keel tracks variables more accurately than"
            keel, pre = acc["keel", depth][k], acc["pre_ln", depth][k]
            verdict = claim(f"{text} Pre-LN", PAPER_HOPS, keel, pre, "higher", TIE, ".3f")
            report.verdicts.append(verdict)
        text = f"Keel, {k} hop(s): {deep} sub-layers more accurate than {shallow}"
        a, b, names = acc["keel", deep][k], acc["keel", shallow][k], (f"L{deep}", f"L{shallow}")
        report.verdicts.append(claim(text, PAPER_HOPS, a, b, "higher", TIE, ".3f", names))
    report.figure(
        hops_figure(acc, sc.depths),
        "hops-accuracy.png",
        "Accuracy per hop count against depth (sub-layers), Keel and Pre-LN, mean ± std",
    )


def hops_figure(acc: dict, depths):
    """One panel per hop count: accuracy against depth, a line per scheme, chance dashed."""
    fig, axes = panels(len(HOPS), 3.2, 3.6, sharey=True)
    for ax, k in zip(axes, HOPS, strict=True):
        for j, scheme in enumerate(SCHEMES):
            points = [
                (d, *mean_std(v))
                for d in depths
                if (v := [x for x in acc[scheme, d][k] if math.isfinite(x)])
            ]
            if points:
                xs, means, stds = zip(*points, strict=True)
                ax.errorbar(
                    xs, means, yerr=stds, marker="o", capsize=3, color=f"C{j}", label=scheme
                )
        ax.axhline(0.1, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set(xscale="log", title=f"{k} hop(s)", xlabel="sub-layers", ylim=(0, 1))
        ax.set_xticks(depths, [str(d) for d in depths], minor=False)
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="accuracy")
    axes[0].legend(fontsize=7)
    return fig


HOPS_PROTOCOL = Protocol(
    name="hops",
    title="multi-hop variable tracking against depth",
    claim="Keel trains deep models whose extra depth buys multi-step accuracy (appendix B); "
    "here: accuracy per hop count on generated variable-tracking programs, Keel and Pre-LN, "
    "against depth.",
    plan=plan,
    analyse=analyse,
)
