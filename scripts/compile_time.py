"""Compile time and step time of one Keel model, eager vs per-block torch.compile (or the whole
model, for comparison), in wall time and CPU time (this process plus finished child processes,
i.e. the C++ compiler inductor runs; what a shared machine disturbs least). docs/benchmarks.md.

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TORCHINDUCTOR_COMPILE_THREADS=1 OMP_NUM_THREADS=1 \\
        python scripts/compile_time.py 512 blocks      # depth in SUB-LAYERS; blocks | whole
"""

import resource
import statistics
import sys
import time

import torch
from torch._dynamo.utils import counters

from keelctl.model import ModelConfig, build_model
from keelctl.model.loss import next_token_loss
from keelctl.train.compile import compile_blocks


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def steps(model, x, n: int) -> list[tuple[float, float]]:
    """(wall, cpu) seconds of n forward + backward passes."""
    out = []
    for _ in range(n):
        wall, cpu = time.perf_counter(), cpu_seconds()
        next_token_loss(model(x), x).backward()
        out.append((time.perf_counter() - wall, cpu_seconds() - cpu))
    return out


def main(depth: int, mode: str) -> None:
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    cfg = ModelConfig(
        residual="keel", d_model=64, n_heads=2, n_kv_heads=1, n_blocks=depth // 2, max_seq_len=64
    )
    x = torch.randint(0, cfg.vocab_size, (2, 64))
    torch.manual_seed(0)
    eager = steps(build_model(cfg), x, 4)
    torch.manual_seed(0)
    model = build_model(cfg)
    compile_blocks(model) if mode == "blocks" else model.compile()
    compiled = steps(model, x, 4)
    ew, ec = (statistics.median(s[i] for s in eager[1:]) for i in (0, 1))
    cw, cc = (statistics.median(s[i] for s in compiled[1:]) for i in (0, 1))
    print(
        f"depth {depth} {mode}: compile wall {compiled[0][0] - cw:.1f} s, "
        f"cpu {compiled[0][1] - cc:.1f} s; step cpu eager {ec * 1e3:.0f} ms, compiled "
        f"{cc * 1e3:.0f} ms (compiled/eager {cc / ec:.2f}); step wall eager {ew * 1e3:.0f} ms, "
        f"compiled {cw * 1e3:.0f} ms; unique graphs {counters['stats']['unique_graphs']}"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
