"""What every protocol module shares: the invocation's Context, the Protocol record, and the
runs several protocols plan alike (one name per run, so they share run dirs and records).

A leaf module (it imports plan, report and scales, never a protocol), so the protocol modules
and the registry in protocol.py all import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from keelctl.repro.plan import Outcome, Progress, RunSpec, make_recipe, make_spec
from keelctl.repro.report import Report
from keelctl.repro.scales import Scale


@dataclass
class Context:
    """Everything a protocol's plan and analysis need to know about this invocation."""

    protocol: str
    scale: Scale
    seeds: list[int]
    out: Path
    runs_dir: Path
    overrides: list[str]
    commands: list[str] = field(default_factory=list)  # analysis commands, for the report
    lrs: list[float] | None = None  # tuned's LR grid (--lrs); None: the scale's

    def recipe(self, **kw):
        return make_recipe(self.scale, self.overrides, **kw)

    def spec(self, label: str, recipe) -> RunSpec:
        return make_spec(label, recipe, self.runs_dir)


@dataclass(frozen=True)
class Protocol:
    name: str
    title: str
    claim: str
    plan: Callable[[Context], list[RunSpec]]
    analyse: Callable[[Context, list[Outcome], Report, Progress], None]
    measures: tuple[str, ...] = ()  # measures.py: per-run measurements kept in each record
    callbacks: Callable[[Context], Callable[[RunSpec], list]] | None = None
    # a staged plan's runs still to be chosen from its records (stand-ins for --plan's cost)
    pending: Callable[[Context], list[RunSpec]] | None = None


SCHEMES = ("pre_ln", "keel")  # Keel and its baseline: the sweeps, redundancy and hops


def label(scheme: str, depth: int, lr: float, seed: int) -> str:
    """One name for a sweep run, so lr-sweep and depth-sweep share their common runs."""
    return f"{scheme}-L{depth}-lr{lr:g}-s{seed}"


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


def sweep_spec(ctx: Context, scheme: str, depth: int, steps: int, seed: int, lr: float) -> RunSpec:
    """A sweep run over `steps`; at the sweep's own steps it is the sweep's run (same name and
    recipe, so the same run dir): scale-map and tuned share the runs they have in common with
    each other and depth-sweep."""
    name = label(scheme, depth, lr, seed)
    if steps != ctx.scale.steps:
        name = f"{scheme}-L{depth}-lr{lr:g}-steps{steps}-s{seed}"
    return train_spec(ctx, scheme, depth, seed, lr, steps, name)


def depth_sweep_specs(ctx: Context, schemes=SCHEMES) -> list[RunSpec]:
    """The depth-sweep's runs; grad-flow, redundancy, design and precision plan the same ones
    (and share them)."""
    sc = ctx.scale
    return [
        train_spec(ctx, scheme, depth, seed, sc.lr, sc.steps, label(scheme, depth, sc.lr, seed))
        for depth in sc.depths
        for seed in ctx.seeds  # seed before scheme: a sweep cut short leaves complete pairs
        for scheme in schemes
    ]


def ramp_spec(ctx: Context, scheme: str, depth: int, seed: int, steps: int) -> RunSpec:
    """max-lr's run: its LR ramps linearly from 0 to the scale's peak over all its `steps`; at
    max-lr's own ramp length it is max-lr's run (scale-map shares it)."""
    name = f"maxlr-{scheme}-L{depth}-s{seed}"
    if steps != ctx.scale.max_lr_steps:
        name = f"maxlr-{scheme}-L{depth}-steps{steps}-s{seed}"
    recipe = ctx.recipe(
        scheme=scheme,
        depth=depth,
        seed=seed,
        lr=ctx.scale.max_lr_peak,
        steps=steps,
        warmup_steps=steps,
        trainer=dict(log_every=1, val_every=steps, grad_flow_every=0),
    )
    return ctx.spec(name, recipe)


def set_flags(keys: dict) -> str:
    """A variant's model keys (design, precision) as `keelctl train` options: --set
    model.alpha=8.0 ("(none)": depth-sweep's run itself)."""

    def text(v) -> str:
        return str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(v, float) else v

    return " ".join(f"--set model.{k}={text(v)}" for k, v in keys.items()) or "(none)"
