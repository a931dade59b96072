"""DIR/report.md: verdicts, results (tables and figures), runs, exact commands, rules, setup.

Written by the tool from the data; figures are PNGs beside report.md, linked relatively.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from keelctl.atomic import atomic_path, atomic_write_text
from keelctl.repro.verdicts import NO_DATA, NOT_AT_SCALE, OPPOSITE, REPRODUCED, Verdict

REPORT_MD = "report.md"


def md_table(headers: str | Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; `headers` may be given as its header line, "a | b | c"."""
    if isinstance(headers, str):
        headers = headers.split(" | ")

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def verdict_line(verdicts: Sequence[Verdict]) -> str:
    """'Verdicts: 2 reproduced, 1 not at this scale, 0 opposite (of 3 claims).', with
    ', 4 no data yet' before the total when a partial sweep left claims without runs."""
    kinds = (REPRODUCED, NOT_AT_SCALE, OPPOSITE)
    counts = {k: sum(v.verdict.startswith(k) for v in verdicts) for k in kinds}
    if any(v.verdict == NO_DATA for v in verdicts):
        counts[NO_DATA] = sum(v.verdict == NO_DATA for v in verdicts)
    parts = ", ".join(f"{n} {k}" for k, n in counts.items())
    return f"**Verdicts: {parts} (of {len(verdicts)} claims).**"


def rel(path: Path, start: Path) -> str:
    """`path` relative to `start` when possible (links inside the report dir stay valid)."""
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


class Report:
    """Collects a protocol's verdicts and result blocks, then renders report.md."""

    def __init__(self, out_dir: Path, title: str, claim: str):
        self.out_dir, self.title, self.claim = Path(out_dir), title, claim
        self.verdicts: list[Verdict] = []
        self.results: list[str] = []
        self.sections: dict[str, list[str]] = {}

    def add(self, *blocks: str) -> None:
        self.results.extend(blocks)

    def figure(self, fig: Figure, filename: str, caption: str) -> Path:
        path = self.out_dir / filename
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        self.add(f"![{caption}]({filename})\n\n*{caption}*")
        return path

    def section(self, heading: str, *blocks: str) -> None:
        self.sections.setdefault(heading, []).extend(blocks)

    def render(self) -> str:
        verdict_rows = [
            (v.claim, v.paper, v.ours, f"**{v.verdict}**", v.rule) for v in self.verdicts
        ]
        parts = [
            f"# {self.title}",
            verdict_line(self.verdicts),
            f"Claim under test: {self.claim}",
            "## Verdicts",
            md_table(("claim", "paper", "ours", "verdict", "rule applied"), verdict_rows),
            "## Results",
            *self.results,
        ]
        for heading, blocks in self.sections.items():
            parts += [f"## {heading}", *blocks]
        return "\n\n".join(parts) + "\n"

    def write(self) -> Path:
        path = self.out_dir / REPORT_MD
        atomic_write_text(path, self.render())
        return path
