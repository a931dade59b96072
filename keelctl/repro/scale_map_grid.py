"""scale-map's grid as data: cells (depth in sub-layers, training steps), their cost and order,
the per-cell "trains" rule, the sentence naming the smallest cell where a claim holds, and the
figure: one claim's verdict in every cell, coloured by verdict, each cell annotated with Keel's
and the baseline's means and n; cells the scale did not plan (over its budget) hatched."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from keelctl.figures import new_figure
from keelctl.repro.verdicts import NO_DATA, NOT_AT_SCALE, OPPOSITE, REPRODUCED, every_run

Cell = tuple[int, int]  # (depth in sub-layers, training steps)

COLOURS = {
    REPRODUCED: "#66bb6a",  # green
    NOT_AT_SCALE: "#ffd54f",  # amber
    OPPOSITE: "#ef5350",  # red
    NO_DATA: "#ffffff",
}
BEYOND = "beyond this scale's budget (not planned)"


def cost(cell: Cell) -> int:
    """Sub-layer-steps: what a cell's run costs, in units of one sub-layer's training step."""
    return cell[0] * cell[1]


def order(cells: Iterable[Cell]) -> list[Cell]:
    """Distinct cells, fewest sub-layer-steps first, ties to the shallower."""
    return sorted(set(cells), key=lambda c: (cost(c), c[0]))


def trains_verdict(keel: Sequence[bool], base: Sequence[bool]) -> str:
    """The "trains" verdict from each side's runs, True = trained: reproduced when every Keel
    run trains and every baseline run fails, opposite when every baseline run trains and every
    Keel run fails, not at this scale otherwise, no data yet when a side has no run."""
    if not keel or not base:
        return NO_DATA
    holds, against = [*keel, *(not b for b in base)], [*(not k for k in keel), *base]
    return every_run(holds, against, single=min(len(keel), len(base)) == 1)


def smallest_sentence(text: str, verdicts: Mapping[Cell, str]) -> str:
    """Where a claim holds first: its reproduced cell with the fewest sub-layer-steps (ties to
    the shallower), how many cells reproduce it, and which have no data yet."""
    held = order(c for c, v in verdicts.items() if v.startswith(REPRODUCED))
    missing = order(c for c, v in verdicts.items() if v == NO_DATA)
    where = (
        f"holds (reproduced) first at {held[0][0]} sub-layers x {held[0][1]} steps "
        f"({cost(held[0])} sub-layer-steps)"
        if held
        else "holds in no measured cell"
    )
    gaps = f"missing: {len(missing)}"
    if missing:
        gaps += " (" + ", ".join(f"{d} x {s}" for d, s in missing) + ")"
    return f"**{text}**: {where}; cells reproduced: {len(held)} of {len(verdicts)}; {gaps}."


def colour(verdict: str) -> str:
    """The fill of a verdict ("reproduced (single seed)" is reproduced's)."""
    if verdict == NO_DATA:
        return COLOURS[NO_DATA]
    return next(c for kind, c in COLOURS.items() if verdict.startswith(kind))


def map_figure(title: str, cells: Mapping[Cell, tuple[str, str]]) -> Figure:
    """cells[(depth, steps)] = (verdict, annotation): every planned cell of one claim. The
    axes span every depth and step count among them; a (depth, steps) pair not in `cells` was
    not planned and is drawn hatched."""
    depths = sorted({d for d, _ in cells})
    steps = sorted({s for _, s in cells})
    fig = new_figure(2.2 * len(steps) + 2.5, 1.2 * len(depths) + 1.8)
    ax = fig.add_subplot()
    for i, d in enumerate(depths):
        for j, s in enumerate(steps):
            if (d, s) in cells:
                verdict, text = cells[(d, s)]
                if verdict == NO_DATA:
                    text = f"{NO_DATA}\n{text}"
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor=colour(verdict), edgecolor="k"))
                ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8)
            else:
                ax.add_patch(
                    Rectangle((j, i), 1, 1, facecolor="#eeeeee", hatch="//", edgecolor="#888888")
                )
                ax.text(j + 0.5, i + 0.5, "beyond\nbudget", ha="center", va="center", fontsize=8)
    ax.set(xlim=(0, len(steps)), ylim=(0, len(depths)), title=title)
    ax.set_xticks([j + 0.5 for j in range(len(steps))], [str(s) for s in steps])
    ax.set_yticks([i + 0.5 for i in range(len(depths))], [str(d) for d in depths])
    ax.set_xlabel("training steps (each cell its own run and cosine schedule)")
    ax.set_ylabel("depth (sub-layers)")
    ax.tick_params(length=0)
    handles = [Patch(facecolor=c, edgecolor="k", label=k) for k, c in COLOURS.items()]
    handles.append(Patch(facecolor="#eeeeee", hatch="//", edgecolor="#888888", label=BEYOND))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return fig
