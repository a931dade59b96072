"""Time full training steps (forward, backward, clip, AdamW, schedule) of one model shape per
(scheme, depth), in a bare PyTorch loop and through keelctl's Lightning module.

Step time is the interval between the ends of consecutive optimizer steps (data movement and
framework hooks included), synchronised on CUDA; reported as the median over the `steps`
timed steps after `warmup` untimed ones. Depth is in sub-layers (blocks = depth / 2).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace

import lightning
import torch

from keelctl import __version__
from keelctl.bench.clock import StepClock
from keelctl.bench.flops import flops_params, flops_per_token, mfu, peak_flops
from keelctl.bench.lightning_path import time_lightning
from keelctl.bench.memory import PeakMemory
from keelctl.bench.ratios import ratio_summary
from keelctl.config import RecipeConfig, recipe_from_dict
from keelctl.errors import KeelError
from keelctl.model import RESIDUALS, build_model, count_parameters
from keelctl.model.loss import next_token_loss
from keelctl.train.optim import build_optimizer, build_schedule
from keelctl.train.prepare import prepare_model

PRECISIONS = ("32", "bf16-mixed")


@dataclass
class BenchOptions:
    """One `keelctl bench` invocation. Defaults finish in about a minute on 2 CPU cores."""

    schemes: list[str] = field(default_factory=lambda: ["keel", "pre_ln", "post_ln"])
    depths: list[int] = field(default_factory=lambda: [4, 8, 16])  # sub-layers
    d_model: int = 128
    n_heads: int | None = None  # None = d_model // 64 (head_dim 64, as in the paper)
    n_kv_heads: int | None = None  # None = n_heads // 2 (GQA, as in the paper)
    ffn_hidden: int | None = None  # None = 3 * d_model
    vocab_size: int = 257
    seq_len: int = 128
    batch_size: int = 4
    steps: int = 8
    warmup: int = 3
    device: str = "cpu"
    precision: str = "32"
    compile: bool = False
    activation_checkpointing: bool = False
    lightning: bool = True
    threads: int | None = None  # CPU threads; None = torch's default, at most the idle cores
    repeats: int = 1  # rounds over every (scheme, depth, path), interleaved (keelctl.bench.ratios)
    seed: int = 0

    def validate(self) -> BenchOptions:
        bad = [s for s in self.schemes if s not in RESIDUALS]
        if not self.schemes or bad:
            raise KeelError(f"unknown scheme(s) {bad}; choose from {', '.join(RESIDUALS)}")
        odd = [d for d in self.depths if d < 2 or d % 2]
        if not self.depths or odd:
            raise KeelError(
                f"depths are sub-layers (2 per block) and must be even and >= 2; got {odd or '[]'}"
            )
        if self.precision not in PRECISIONS:
            raise KeelError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.device not in ("cpu", "cuda"):
            raise KeelError(f"device must be cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise KeelError("--device cuda but no CUDA device is visible; use --device cpu")
        if min(self.steps, self.seq_len, self.batch_size, self.d_model, self.threads or 1) < 1:
            raise KeelError("steps, seq-len, batch-size, d-model and threads must be >= 1")
        if self.warmup < 0:
            raise KeelError("warmup must be >= 0")
        if self.repeats < 1:
            raise KeelError(f"--repeats {self.repeats} must be at least 1")
        return self

    def recipe(self, scheme: str, depth: int) -> RecipeConfig:
        """The recipe both paths train: default optimiser settings, this shape and precision."""
        heads = self.n_heads or max(1, self.d_model // 64)
        model = dict(
            residual=scheme,
            n_blocks=depth // 2,
            d_model=self.d_model,
            n_heads=heads,
            n_kv_heads=self.n_kv_heads or max(1, heads // 2),
            ffn_hidden=self.ffn_hidden,
            vocab_size=self.vocab_size,
            max_seq_len=self.seq_len,
        )
        trainer = dict(
            max_steps=self.warmup + self.steps,
            precision=self.precision,
            compile=self.compile,
            activation_checkpointing=self.activation_checkpointing,
            grad_flow_every=0,
            accelerator=self.device,
        )
        data = dict(seq_len=self.seq_len, batch_size=self.batch_size)
        return recipe_from_dict(
            dict(
                name=f"bench-{scheme}-{depth}",
                seed=self.seed,
                model=model,
                data=data,
                trainer=trainer,
            ),
            source="bench options",
        )


def _batches(opts: BenchOptions) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """warmup + steps random (x, y) token batches on the CPU, the same for every run."""
    gen = torch.Generator().manual_seed(opts.seed)
    shape = (opts.warmup + opts.steps, opts.batch_size, opts.seq_len + 1)
    tokens = torch.randint(0, opts.vocab_size, shape, generator=gen)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def time_bare(recipe: RecipeConfig, batches: list, device: torch.device) -> StepClock:
    """Step intervals (wall and CPU) of a plain loop doing what the Lightning module does:
    forward and loss under autocast, backward, gradient clipping, AdamW step, schedule step."""
    with torch.device(device):  # parameters are created on the device (fast init at 1B+)
        model = prepare_model(build_model(recipe.model), recipe.trainer)  # as LanguageModel
    opt = build_optimizer(model, recipe.optim)
    schedule = build_schedule(opt, recipe.optim, recipe.trainer.max_steps)
    bf16 = recipe.trainer.precision == "bf16-mixed"
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    clock = StepClock(device)
    clock.start()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with amp:
            loss = next_token_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        schedule.step()
        clock.tick()
    return clock


def _summary(clock: StepClock, warmup: int, tokens: int, fpt: int, peak: float | None, mem) -> dict:
    times, timed = clock.wall, clock.wall[warmup:]
    step = statistics.median(timed)
    tps = tokens / step
    return {
        "step_time_s": step,
        # With --compile, first_step_s - step_time_s is the compile time of the first step.
        "first_step_s": times[0],
        "step_time_min_s": min(timed),
        "step_time_max_s": max(timed),
        "tokens_per_s": tps,
        "achieved_tflops": fpt * tps / 1e12,
        "mfu": mfu(fpt, tps, peak),
        "peak_mem_bytes": mem,
        "step_times_s": timed,
        "cpu_step_time_s": statistics.median(clock.cpu[warmup:]),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def bench_one(opts: BenchOptions, scheme: str, depth: int, lightning_first: bool = False) -> dict:
    """Bench one (scheme, depth): both paths, each with its own peak-memory measurement;
    lightning_first swaps their order (rounds alternate it, as they do the schemes')."""
    recipe = opts.recipe(scheme, depth)
    cfg = recipe.model
    device = torch.device(opts.device)
    with torch.device("meta"):
        shape = build_model(cfg)
    n_params, n_flops = count_parameters(shape), flops_params(shape)
    fpt = flops_per_token(n_flops, cfg.n_blocks, cfg.d_model, opts.seq_len)
    peak = peak_flops(device_name(device), opts.precision) if device.type == "cuda" else None
    tokens = opts.batch_size * opts.seq_len
    row = {
        "scheme": scheme,
        "depth_sublayers": depth,
        "n_blocks": cfg.n_blocks,
        "params": n_params,
        "flops_params": n_flops,
        "flops_per_token": fpt,
        "bare": None,
        "lightning": None,
        "lightning_overhead": None,
        "error": None,
    }
    paths = [("bare", time_bare)] + ([("lightning", time_lightning)] if opts.lightning else [])
    if lightning_first:
        paths.reverse()
    for name, timer in paths:
        torch.manual_seed(opts.seed)
        try:
            with PeakMemory(device) as mem:
                clock = timer(recipe, _batches(opts), device)
        except torch.cuda.OutOfMemoryError:
            row["error"] = f"out of memory ({name})"
            break
        row[name] = _summary(clock, opts.warmup, tokens, fpt, peak, mem.bytes)
    if row["bare"] and row["lightning"]:
        row["lightning_overhead"] = row["lightning"]["step_time_s"] / row["bare"]["step_time_s"]
    return row


def _relative_to_pre_ln(rows: list[dict]) -> None:
    """step_time / pre_ln's step_time at the same depth in the same round (bare path)."""
    base = {
        (r["round"], r["depth_sublayers"]): r["bare"]["step_time_s"]
        for r in rows
        if r["scheme"] == "pre_ln" and r["bare"]
    }
    for r in rows:
        ref = base.get((r["round"], r["depth_sublayers"]))
        r["vs_pre_ln"] = r["bare"]["step_time_s"] / ref if r["bare"] and ref else None


def meta(opts: BenchOptions) -> dict:
    device = torch.device(opts.device)
    return {
        "keelctl_version": __version__,
        "torch_version": torch.__version__,
        "lightning_version": lightning.__version__,
        "python": platform.python_version(),
        "device": opts.device,
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": [os.getloadavg()[0]],  # before (and after, appended): CPU contention
        "peak_flops": peak_flops(device_name(device), opts.precision)
        if device.type == "cuda"
        else None,
        "depth_unit": "sub-layers (attention or FFN); blocks = depth / 2",
        "flops_convention": "6*N + 12*n_blocks*d_model*seq_len per token; N = parameters except "
        "the input token embedding (head included); recomputation not counted",
        "step_time": "median interval between consecutive optimizer-step ends after warm-up",
        "memory": (
            "torch.cuda.max_memory_allocated above the start"
            if device.type == "cuda"
            else "peak RSS (VmHWM, reset per run) above RSS at the start"
        ),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _idle_cores(default: int) -> int:
    """torch's thread count, but no more than the idle cores (by the 1-minute load average):
    an OpenMP team on an oversubscribed CPU waits for its descheduled threads (here, on 2
    shared cores, 2 threads made steps up to 10x slower than 1 thread)."""
    idle = (os.cpu_count() or 1) - os.getloadavg()[0]
    return max(1, min(default, round(idle)))


def run_bench(opts: BenchOptions, on_row: Callable[[dict], None] | None = None) -> dict:
    """All configurations, depth-major, as the JSON document `keelctl bench --output` writes,
    `repeats` times over (rows carry their round). Schemes are interleaved and their order
    alternates from depth to depth and round to round, and the two paths swap order every
    round, so neither drift in a shared machine's load nor going first favours one of them;
    doc["ratios"] has each ratio's median over the rounds with its spread.
    on_row is called with each result row as it finishes."""
    opts.validate()
    device = torch.device(opts.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # vanishing gradients' subnormals slow CPUs ~8x
    threads = torch.get_num_threads()
    torch.set_num_threads(
        opts.threads or (_idle_cores(threads) if device.type == "cpu" else threads)
    )
    try:
        doc = {"meta": meta(opts), "options": asdict(opts), "results": []}
        # One untimed step first: one-time costs (thread pools, CUDA context, cuBLAS
        # workspace, lazy init) would otherwise land on the first row's time and memory.
        plain = replace(opts, compile=False, activation_checkpointing=False)
        time_bare(plain.recipe(opts.schemes[0], opts.depths[0]), _batches(opts)[:1], device)
        for round_ in range(opts.repeats):
            for i, depth in enumerate(opts.depths):
                flip = (i + round_) % 2 == 1
                for scheme in opts.schemes[::-1] if flip else opts.schemes:
                    row = bench_one(opts, scheme, depth, lightning_first=round_ % 2 == 1)
                    doc["results"].append({"round": round_, **row})
                    if on_row:
                        on_row(doc["results"][-1])
    finally:
        torch.set_num_threads(threads)
    doc["meta"]["load_avg_1m"].append(os.getloadavg()[0])
    _relative_to_pre_ln(doc["results"])
    doc["ratios"] = ratio_summary(doc["results"])
    return doc
