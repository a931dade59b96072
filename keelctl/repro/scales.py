"""The three scales of `keelctl repro`, as data (documented in docs/repro.md).

micro  a few steps of 2- and 4-sub-layer models on any corpus: the tests' scale; its numbers
       mean nothing.
cpu    d_model 64 on the Python standard-library sources, byte tokenizer, 16, 64 and 256
       sub-layers, 3 seeds: every protocol together in about 3 h 20 min on 2 CPU cores with
       `--jobs 2` (sized from measured steps: 0.17 s at 16, 0.65 s at 64 and about 2.9 s at 256
       sub-layers, one torch thread, batch 16 x 128 tokens; `--plan` prints the estimate).
gpu    the paper's shapes: d_model 1024 (FFN 3072, 16 heads, 8 KV heads), 1024 x 4096 tokens per
       step through 8 devices x 4 sequences x 32 accumulation, bf16; 64..1024 sub-layers.
       Step counts here are ours (the paper trains far longer); plans only are tested.

Depths are in sub-layers (the paper's "layers"); a recipe gets n_blocks = depth / 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from keelctl.errors import KeelError
from keelctl.repro.divergence import DivergenceRules


@dataclass(frozen=True)
class Scale:
    name: str
    recipe: dict  # base recipe shared by every run (sections model, data, optim, trainer)
    # depth-sweep (and the grad-flow / redundancy runs, which are the same runs)
    depths: tuple[int, ...]
    steps: int  # same for every depth: a fixed token budget
    # lr-sweep (its run at `lr` is depth-sweep's run at lr_sweep_depth when the steps agree)
    lr_sweep_depth: int
    # max-lr: LR warmed linearly from 0 to max_lr_peak over max_lr_steps, no decay
    max_lr_depths: tuple[int, ...]
    max_lr_steps: int
    max_lr_peak: float = 5e-2
    lr: float = 3e-3  # depth-sweep's LR, the same for every scheme (an equal-LR comparison)
    lrs: tuple[float, ...] = (1.5e-3, 3e-3, 6e-3)
    # redundancy: evaluation tokens per removal; eval/ablation batch size
    ablation_tokens: int = 16384
    eval_batch_size: int = 8
    # depth-sweep's downstream score: bundled lm-eval tasks and documents per task (None = all)
    tasks: tuple[str, ...] = ("keel_nextline",)
    task_limit: int | None = None
    seed: int = 0  # seeds are seed, seed + 1, ...
    max_lr_schemes: tuple[str, ...] = (
        "post_ln",
        "deepnorm",
        "mix_ln",
        "hybridnorm",
        "pre_ln",
        "keel",
        "peri_ln",
        "lns",
    )
    grad_schemes: tuple[str, ...] = ("post_ln", "deepnorm", "pre_ln", "keel")
    # today's depth fixes (not in the paper): grad-flow plans them at max_lr_depths only
    fix_schemes: tuple[str, ...] = ("peri_ln", "lns")
    # the --plan estimate: measured seconds per training step per sub-layer (None: no estimate),
    # and the held-out split's size in tokens (`keelctl eval` scores all of it; None: val_tokens)
    step_s_per_sublayer: float | None = None
    heldout_tokens: int | None = None
    # scale-map (scale_map.py): cells depth x steps at depth-sweep's LR, cells whose sub-layer-
    # steps (depth * steps) exceed map_max_cost left out; the "trains at all" claim also at
    # map_trains_depths x map_trains_steps; a run "trains" below unigram_nll (nats/token, the
    # scored validation targets' unigram entropy; None: ln(vocab_size), the uniform level)
    map_depths: tuple[int, ...] = ()
    map_steps: tuple[int, ...] = ()
    map_max_cost: int | None = None
    map_trains_depths: tuple[int, ...] = ()
    map_trains_steps: tuple[int, ...] = ()
    unigram_nll: float | None = None
    # design: Keel's section 4.2 variants (design.py), at depth-sweep's LR and steps
    design_depths: tuple[int, ...] = ()

    @property
    def lr_sweep_steps(self) -> int:
        return self.steps

    @property
    def divergence(self) -> DivergenceRules:
        """The detector's rules, scaled to this scale's LR ramp (divergence.py)."""
        return DivergenceRules.for_ramp(self.max_lr_steps)


_SMALL_MODEL = dict(n_heads=4, n_kv_heads=2, vocab_size=257)

MICRO = Scale(
    name="micro",
    recipe=dict(
        model=dict(d_model=32, max_seq_len=64, **_SMALL_MODEL),
        data=dict(seq_len=64, batch_size=4, val_tokens=512),  # 64: keel_nextline's lines fit
        optim=dict(min_lr=1e-5),
        trainer=dict(accelerator="cpu", log_every=1, val_every=4, grad_flow_every=3),
    ),
    depths=(2, 4),
    steps=6,
    lrs=(3e-3, 1e-2),
    lr_sweep_depth=2,
    max_lr_depths=(2, 4),
    max_lr_steps=10,
    ablation_tokens=256,
    eval_batch_size=4,
    task_limit=4,
    map_depths=(2, 4),
    map_steps=(4, 6),  # 6 = steps: that column is depth-sweep's runs
    map_max_cost=16,  # (4, 6) left out, as cpu's (256, 1000)
    map_trains_depths=(8,),
    map_trains_steps=(4,),
    design_depths=(4,),  # the smallest depth with a sub-layer above Keel's first block
)

CPU = Scale(
    name="cpu",
    recipe=dict(
        model=dict(d_model=64, max_seq_len=128, **_SMALL_MODEL),
        data=dict(corpus="builtin:python-stdlib", seq_len=128, batch_size=16, val_tokens=32768),
        optim=dict(min_lr=3e-5),
        trainer=dict(accelerator="cpu", log_every=1, val_every=125, grad_flow_every=125),
    ),
    depths=(16, 64, 256),
    steps=250,
    lr_sweep_depth=64,
    # the committed runs' slope (0.05 per 250 steps), carried on to 0.1: the first 250 steps
    # are the committed ramp, the rest reaches LRs where Keel and Pre-LN may diverge too
    max_lr_depths=(16, 64),
    max_lr_steps=500,
    max_lr_peak=0.1,
    ablation_tokens=4096,
    eval_batch_size=16,
    task_limit=200,
    step_s_per_sublayer=0.0102,  # 0.65 s per step at 64 sub-layers, quiet machine, 1 thread
    heldout_tokens=245193,  # 1% of the stdlib files, measured (eval.json "tokens")
    map_depths=(16, 64, 256),
    map_steps=(100, 250, 1000),  # 250 = steps: that column is depth-sweep's and grad-flow's runs
    map_max_cost=64 * 1000,  # (256, 1000) left out: alone it costs more than the rest together
    map_trains_depths=(1024,),
    map_trains_steps=(100,),
    unigram_nll=3.031,  # measured by scripts/unigram_nll.py (32768 scored validation tokens)
    design_depths=(64, 256),
)

GPU = Scale(
    name="gpu",
    recipe=dict(
        model=dict(
            d_model=1024,
            ffn_hidden=3072,
            n_heads=16,
            n_kv_heads=8,
            max_seq_len=4096,
            vocab_size=50304,
        ),
        data=dict(
            corpus="hf:HuggingFaceFW/fineweb-edu:sample-100BT",
            tokenizer="gpt2",  # GPT-2's pretrained tokenizer, as the GPU recipes (docs/data.md)
            vocab_size=50304,
            seq_len=4096,
            batch_size=4,
            val_tokens=1048576,
        ),
        optim=dict(min_lr=1e-7),
        trainer=dict(
            accelerator="gpu",
            devices=8,
            strategy="fsdp",
            accumulate_grad_batches=32,
            precision="bf16-mixed",
            log_every=1,
            val_every=1000,
            grad_flow_every=1000,
        ),
    ),
    depths=(64, 128, 512, 1024),
    steps=20000,
    lr_sweep_depth=512,
    max_lr_depths=(64, 512),
    max_lr_steps=5000,
    ablation_tokens=1048576,
    map_depths=(64, 128, 512),
    map_steps=(2000, 5000, 20000),  # 20000 = steps: depth-sweep's runs
    map_max_cost=128 * 20000,
    map_trains_depths=(1024,),
    map_trains_steps=(2000,),
    design_depths=(64, 512),
)

SCALES: dict[str, Scale] = {s.name: s for s in (MICRO, CPU, GPU)}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise KeelError(f"unknown --scale {name!r}; use one of {', '.join(SCALES)}")
    return SCALES[name]
