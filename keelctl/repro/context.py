"""What every protocol module shares: the invocation's Context and the Protocol record.

A leaf module (it imports plan, report and scales, never a protocol), so the protocol modules
(sweeps, max_lr, analyses) and the registry in protocol.py all import it without a cycle.
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
