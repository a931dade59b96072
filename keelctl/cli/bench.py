"""`keelctl bench`: tokens/s, MFU and peak memory of training steps against depth, per scheme,
in a bare PyTorch loop and through keelctl's Lightning module (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from keelctl.cli.app import command, console
from keelctl.errors import KeelError

if TYPE_CHECKING:  # the CLI imports torch only inside commands
    from keelctl.bench import BenchOptions


def _split(text: str, what: str, cast=str) -> list:
    try:
        return [cast(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise KeelError(f"--{what} expects a comma-separated list, got {text!r}") from None


@command("bench")
def bench(
    schemes: str = typer.Option("keel,pre_ln,post_ln", "--schemes", help="Residual schemes."),
    depths: str = typer.Option(
        "4,8,16", "--depths", help="Depths in SUB-LAYERS (the paper's layers; blocks = depth/2)."
    ),
    d_model: int = typer.Option(128, "--d-model"),
    n_heads: int | None = typer.Option(None, "--n-heads", help="Default: d_model // 64."),
    n_kv_heads: int | None = typer.Option(None, "--n-kv-heads", help="Default: n_heads // 2."),
    ffn_hidden: int | None = typer.Option(None, "--ffn-hidden", help="Default: 3 * d_model."),
    vocab_size: int = typer.Option(257, "--vocab-size", help=">= 257 (the byte tokenizer)."),
    seq_len: int = typer.Option(128, "--seq-len"),
    batch_size: int = typer.Option(4, "--batch-size"),
    steps: int = typer.Option(8, "--steps", help="Timed steps (median reported)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed steps first."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    precision: str = typer.Option("32", "--precision", help="32 or bf16-mixed."),
    compile: bool = typer.Option(
        False, "--compile", help="torch.compile each block (per-block, as torchtitan)."
    ),
    activation_checkpointing: bool = typer.Option(
        False, "--activation-checkpointing", help="Recompute each block in backward."
    ),
    lightning: bool = typer.Option(
        True, "--lightning/--no-lightning", help="Also time keelctl's Lightning module."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads (default: torch's, at most the idle cores)."
    ),
    repeats: int = typer.Option(
        1,
        "--repeats",
        help="Time everything N times, interleaved; report each ratio's median and spread.",
    ),
    output: Path | None = typer.Option(None, "--output", help="Write results as JSON here."),
    plot: Path | None = typer.Option(
        None, "--plot", help="PNG of tokens/s and memory vs depth. Default: --output's .png."
    ),
) -> None:
    """Time full training steps (forward, backward, AdamW) per scheme and depth.

    Defaults finish in about a minute on 2 CPU cores; the paper's shapes need a GPU."""
    from keelctl.bench import BenchOptions

    opts = BenchOptions(
        schemes=_split(schemes, "schemes"),
        depths=_split(depths, "depths", int),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn_hidden=ffn_hidden,
        vocab_size=vocab_size,
        seq_len=seq_len,
        batch_size=batch_size,
        steps=steps,
        warmup=warmup,
        device=device,
        precision=precision,
        compile=compile,
        activation_checkpointing=activation_checkpointing,
        lightning=lightning,
        threads=threads,
        repeats=repeats,
    ).validate()
    _bench(opts, output, plot)


def _bench(opts: BenchOptions, output: Path | None, plot: Path | None) -> None:
    """Run `opts` behind a progress line, print the tables, write --output and --plot."""
    from keelctl.atomic import atomic_path, atomic_write_json
    from keelctl.bench import run_bench
    from keelctl.bench.report import bench_figure, bench_table, ratio_table

    total = len(opts.schemes) * len(opts.depths) * opts.repeats
    with console.status(f"benchmarking 1/{total}") as status:
        done = []

        def on_row(row: dict) -> None:
            done.append(row)
            status.update(
                f"benchmarking {len(done) + 1}/{total} "
                f"(last: {row['scheme']} depth {row['depth_sublayers']})"
            )

        doc = run_bench(opts, on_row=on_row)
    console.print(bench_table(doc))
    if opts.repeats > 1:
        console.print(ratio_table(doc))
    load, cores = doc["meta"]["load_avg_1m"][0], doc["meta"]["cpu_count"]
    if opts.device == "cpu" and load > cores:
        console.print(
            f"[yellow]note: the machine was busy (load {load:.1f} on {cores} cores, "
            f"{doc['meta']['torch_threads']} thread(s) used): CPU timings are noisy.[/yellow]"
        )
    if output:
        atomic_write_json(output, doc)
        console.print(f"wrote {output}")
    plot = plot or (output.with_suffix(".png") if output else None)
    if plot:
        with atomic_path(plot) as tmp:
            bench_figure(doc).savefig(tmp, dpi=120, format="png")
        console.print(f"wrote {plot}")
