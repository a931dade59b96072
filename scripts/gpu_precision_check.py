"""The prepared GPU check of issue 25 (item 5): a deep Keel trained bf16-mixed through keelctl's
own FSDP2 sharding (shard_model: the norms in fp32 units) on one GPU, per-block compile, fused
AdamW; then the sharded bf16 forward against the fp32 weights' logits (limits 2% relative L2,
top-1 0.95, as tests/model/test_precision_logits.py). Depth in SUB-LAYERS (2 per block).

    python scripts/gpu_precision_check.py --out results/precision-gpu.json          # GPU
    python scripts/gpu_precision_check.py --smoke --out /tmp/pc.json                # CPU rehearsal

Defaults: 512 sub-layers at d_model 1024 (FFN 3072, 16 heads, 8 KV heads), byte vocabulary,
seq 1024 x batch 4, activation checkpointing, 3 untimed + 10 timed steps at LR 3e-3; writes one
JSON (card, tokens/s, MFU, peak memory, logit agreement). Exit 0 only when the check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sublayers", type=int, default=512)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--smoke", action="store_true", help="CPU rehearsal at toy size")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.smoke:
        args.sublayers, args.d_model, args.seq_len, args.batch_size = 16, 64, 32, 2
        args.warmup, args.steps = 1, 2
    return args


def agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    got, want = got.double(), want.double()
    rel = float((got - want).norm() / want.norm())
    return rel, float((got.argmax(-1) == want.argmax(-1)).double().mean())


def train_timed(model, x, y, args, amp, cuda: bool) -> tuple[float, float, float]:
    """(first step's seconds, compile included; mean seconds of the timed steps; last loss):
    AdamW (fused on a GPU), clipping at 1, the loss under bf16 autocast."""
    from keelctl.config import OptimConfig
    from keelctl.model.loss import next_token_loss
    from keelctl.train.optim import build_optimizer

    optimizer = build_optimizer(model, OptimConfig(lr=3e-3))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ends, started = [], time.perf_counter()
    for step in range(args.warmup + args.steps):
        with amp:
            loss = next_token_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        ends.append(time.perf_counter())
        print(f"step {step} loss {loss.item():.4f} {ends[-1] - started:.1f} s", flush=True)
    return ends[0] - started, (ends[-1] - ends[args.warmup - 1]) / args.steps, loss.item()


def main() -> int:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    from keelctl.bench.flops import flops_params, flops_per_token, mfu, peak_flops
    from keelctl.model import ModelConfig, build_model
    from keelctl.model.checkpointing import apply_activation_checkpointing
    from keelctl.train.compile import compile_blocks
    from keelctl.train.parallel import shard_model

    args = parse()
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    store = Path(tempfile.mkdtemp()) / "store"
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=f"file://{store}", rank=0, world_size=1
    )
    mesh = init_device_mesh(device.type, (1,))
    torch.manual_seed(0)
    d = args.d_model
    cfg = ModelConfig(
        residual="keel",
        vocab_size=257,
        d_model=d,
        n_heads=max(2, d // 64),
        n_kv_heads=max(1, d // 128),
        ffn_hidden=3 * d,
        n_blocks=args.sublayers // 2,
        max_seq_len=args.seq_len,
    )
    with torch.device(device):
        model = build_model(cfg)
    n_flops_params = flops_params(model)
    apply_activation_checkpointing(model)
    if not args.no_compile:
        compile_blocks(model)
    shard_model(model, mesh, "bf16-mixed")
    tokens = torch.randint(0, 257, (args.batch_size, args.seq_len + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    first_step_s, step_s, loss = train_timed(model, x, y, args, amp, cuda)
    tokens_per_s = args.batch_size * args.seq_len / step_s
    with torch.no_grad(), amp:
        sharded = model(x).float()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)  # the full fp32 weights, on the CPU
    del model
    with torch.device(device):
        reference = build_model(cfg)
    reference.load_state_dict(state)
    with torch.no_grad():
        want = reference(x)
    gains = torch.cat(
        [s.norm_out.weight.detach().float() for s in reference.sublayers if s.norm_out is not None]
    )
    rel, top1 = agreement(sharded, want)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    fpt = flops_per_token(n_flops_params, cfg.n_blocks, d, args.seq_len)
    result = {
        "device": name,
        "sublayers": cfg.n_sublayers,
        "n_blocks": cfg.n_blocks,
        "d_model": d,
        "params": sum(p.numel() for p in reference.parameters()),
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "precision": "bf16-mixed, FSDP2 one device, norms fp32 units",
        "compile": not args.no_compile,
        "activation_checkpointing": True,
        "timed_steps": args.steps,
        "first_step_s": first_step_s,
        "step_s": step_s,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(fpt, tokens_per_s, peak_flops(name, "bf16-mixed")),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "final_loss": loss,
        "gain_mean_abs_deviation": float((gains - 1).abs().mean()),
        "logits_rel_l2_vs_fp32": rel,
        "logits_top1_vs_fp32": top1,
        "passed": rel <= 0.02 and top1 >= 0.95,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    dist.destroy_process_group()
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    sys.exit(main())
