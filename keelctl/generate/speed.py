"""Decoding speed with and without the KV cache (the numbers in docs/generate.md).

    [nice -n 19] env OMP_NUM_THREADS=1 python -m keelctl.generate.speed [REPEATS]

Untrained Keel models of width 64 at 64 and 256 sub-layers, batch 1, a 16-token prompt, 512
new tokens, greedy. End-of-text is given an id the model cannot produce, so every run makes
all 512 tokens; the context (1024) is never reached, so the window never slides. Speed is
tokens per CPU-second of this process (one thread), which a busy shared machine disturbs far
less than wall time; wall time is printed beside it. Each depth is timed REPEATS times
(default 3), without and with the cache in turn; the table gives medians and the range of the
speed-up over the repeats.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time

import torch

from keelctl.generate.decode import generate
from keelctl.model import ModelConfig, build_model

DEPTHS = (64, 256)  # sub-layers
NEW_TOKENS, PROMPT, CONTEXT = 512, 16, 1024


def tokens_per_second(n_sublayers: int, use_cache: bool, d_model: int = 64) -> tuple[float, float]:
    """(new tokens per CPU-second, per wall-clock second)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        residual="keel",
        d_model=d_model,
        n_heads=4,
        n_kv_heads=2,
        n_blocks=n_sublayers // 2,
        max_seq_len=CONTEXT,
    )
    model = build_model(cfg).eval()
    prompt = torch.randint(0, 256, (PROMPT,)).tolist()
    cpu, wall = time.process_time(), time.perf_counter()
    (new,) = generate(
        model,
        [prompt],
        max_new_tokens=NEW_TOKENS,
        context=CONTEXT,
        eot_id=cfg.vocab_size,
        use_cache=use_cache,
    )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert len(new) == NEW_TOKENS
    return NEW_TOKENS / cpu, NEW_TOKENS / wall


def main(repeats: int = 3) -> None:
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor()}")
    print(f"medians of {repeats} runs; speed-up: median (lowest-highest)")
    print("| sub-layers | without cache | with cache | speed-up | (wall: without, with) |")
    print("|---:|---:|---:|---:|---:|")
    for depth in DEPTHS:
        without, cached = [], []
        for _ in range(repeats):  # interleaved, so a busy spell slows both alike
            without.append(tokens_per_second(depth, use_cache=False))
            cached.append(tokens_per_second(depth, use_cache=True))
        cpu, wall = (
            [statistics.median(run[clock] for run in runs) for runs in (without, cached)]
            for clock in (0, 1)
        )
        ratios = [fast[0] / slow[0] for slow, fast in zip(without, cached, strict=True)]
        print(
            f"| {depth} | {cpu[0]:.1f} | {cpu[1]:.1f} | {statistics.median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | ({wall[0]:.1f}, {wall[1]:.1f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
