"""Ratios that hold still on a busy machine. `keelctl bench --repeats N` times every (scheme,
depth, path) N times, interleaved; each ratio is taken within one round (its two step times
measured at most a few minutes apart) and summarised over the rounds by its median and spread.

Two ratios, each from the wall-clock step time and from the CPU time of the step (what this
process spent; other processes' load stretches wall time far more than CPU time):
- vs_pre_ln: a scheme's bare-loop step time over pre_ln's at the same depth;
- lightning_over_bare: keelctl's Lightning module's step time over the bare loop's, same
  scheme and depth (the framework's overhead).
"""

from __future__ import annotations

import statistics

CLOCKS = {"wall": "step_time_s", "cpu": "cpu_step_time_s"}


def spread(values: list[float]) -> dict:
    """Median, min, max and count of one ratio over the rounds."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def ratio_summary(rows: list[dict]) -> list[dict]:
    """One entry per (scheme, depth): each ratio's spread per clock (None where it has no
    value: pre_ln against itself, --no-lightning, or a path that failed in every round)."""
    pre_ln = {
        (r["round"], r["depth_sublayers"]): r["bare"] for r in rows if r["scheme"] == "pre_ln"
    }
    entries = []
    for scheme, depth in dict.fromkeys((r["scheme"], r["depth_sublayers"]) for r in rows):
        mine = [r for r in rows if r["scheme"] == scheme and r["depth_sublayers"] == depth]
        entry = {"scheme": scheme, "depth_sublayers": depth}
        for clock, field in CLOCKS.items():
            vs = [
                r["bare"][field] / ref[field]
                for r in mine
                if scheme != "pre_ln" and r["bare"] and (ref := pre_ln.get((r["round"], depth)))
            ]
            overhead = [
                r["lightning"][field] / r["bare"][field]
                for r in mine
                if r["lightning"] and r["bare"]
            ]
            entry[f"vs_pre_ln_{clock}"] = spread(vs) if vs else None
            entry[f"lightning_over_bare_{clock}"] = spread(overhead) if overhead else None
        entries.append(entry)
    return entries
