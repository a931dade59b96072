"""Present `keelctl bench` results: a rich table and a figure (tokens/s and memory vs depth)."""

from __future__ import annotations

from rich import box
from rich.table import Table


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _mem(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _num(x: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if x is None else format(x, fmt) + suffix


def _precision(opts: dict) -> str:
    return "fp32" if opts["precision"] == "32" else opts["precision"]


def bench_table(doc: dict) -> Table:
    """One row per (scheme, depth): the bare loop's numbers, then Lightning's step time over
    the bare loop's (framework overhead)."""
    meta, opts = doc["meta"], doc["options"]
    rate = "MFU" if meta["peak_flops"] else "TFLOP/s"
    table = Table(
        title=f"keelctl bench: {meta['device_name']}, {_precision(opts)}, d_model "
        f"{opts['d_model']}, {opts['batch_size']} x {opts['seq_len']} tokens per step",
        caption="depth in sub-layers (blocks = depth / 2); bare PyTorch loop; /pre_ln: step "
        "time over pre_ln's at that depth; L/bare: Lightning's step time over the bare loop's; "
        "compile s: first step's time minus a compiled step's (per-block torch.compile)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in (
        "scheme",
        "depth",
        "params",
        "ms/step",
        "tok/s",
        rate,
        "peak mem",
        "/pre_ln",
        "L/bare",
        *(["compile s"] if opts["compile"] else []),
    ):
        table.add_column(col, justify="left" if col == "scheme" else "right", no_wrap=True)
    for r in doc["results"]:
        head = [r["scheme"], str(r["depth_sublayers"]), _count(r["params"])]
        bare = r["bare"]
        if bare is None:
            table.add_row(*head, f"[red]{r['error']}[/red]")
            continue
        ms = bare["step_time_s"] * 1e3
        speed = _num(bare["mfu"], ".1%") if meta["peak_flops"] else f"{bare['achieved_tflops']:.3f}"
        table.add_row(
            *head,
            f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}",
            f"{bare['tokens_per_s']:,.0f}",
            speed,
            _mem(bare["peak_mem_bytes"]),
            _num(r.get("vs_pre_ln"), ".2f", "x"),
            _num(r["lightning_overhead"], ".2f", "x") if r["lightning"] else (r["error"] or "-"),
            *([f"{bare['first_step_s'] - bare['step_time_s']:.1f}"] if opts["compile"] else []),
        )
    return table


def _ratio(s: dict | None) -> str:
    return "-" if s is None else f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def ratio_table(doc: dict) -> Table:
    """Each ratio's median over the rounds of --repeats, [min-max] beside it, CPU and wall."""
    rounds = doc["options"]["repeats"]
    table = Table(
        # "\\[" is a literal "[" in rich markup
        title=f"ratios over {rounds} interleaved rounds: median \\[min-max]",
        caption="depth in sub-layers; /pre_ln: bare-loop step time over pre_ln's at that depth "
        "in the same round; L/bare: Lightning's step time over the bare loop's; cpu: CPU time "
        "of the step (steadier on a busy machine), wall: wall-clock time",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("scheme", "depth", "/pre_ln cpu", "/pre_ln wall", "L/bare cpu", "L/bare wall"):
        table.add_column(col, justify="left" if col == "scheme" else "right", no_wrap=True)
    for e in doc["ratios"]:
        table.add_row(
            e["scheme"],
            str(e["depth_sublayers"]),
            *(
                _ratio(e[f"{name}_{clock}"])
                for name in ("vs_pre_ln", "lightning_over_bare")
                for clock in ("cpu", "wall")
            ),
        )
    return table


def bench_figure(doc: dict):
    """Tokens/s (left) and peak memory (right) against depth, a line per scheme (bare loop)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, nothing to close

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_speed, ax_mem = fig.subplots(1, 2)
    for scheme in dict.fromkeys(r["scheme"] for r in doc["results"]):
        rows = [r for r in doc["results"] if r["scheme"] == scheme and r["bare"]]
        rows = [r for r in rows if r.get("round", 0) == 0]  # --repeats: the first round's
        depths = [r["depth_sublayers"] for r in rows]
        ax_speed.plot(depths, [r["bare"]["tokens_per_s"] for r in rows], marker="o", label=scheme)
        mem = [
            (d, r["bare"]["peak_mem_bytes"])
            for d, r in zip(depths, rows, strict=True)
            if r["bare"]["peak_mem_bytes"] is not None
        ]
        ax_mem.plot([d for d, _ in mem], [m / 2**30 for _, m in mem], marker="o", label=scheme)
    opts, meta = doc["options"], doc["meta"]
    for ax, ylabel in ((ax_speed, "tokens / s (training step)"), (ax_mem, "peak memory (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # log-log: cost linear in depth is a line of slope 1
        ax.set_xlabel("depth (sub-layers)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    extras = [k for k in ("compile", "activation_checkpointing") if opts[k]]
    fig.suptitle(
        f"{meta['device_name']}, {_precision(opts)}, d_model {opts['d_model']}, "
        f"seq {opts['seq_len']} x batch {opts['batch_size']}"
        + (f", {' + '.join(extras)}" if extras else "")
    )
    return fig
