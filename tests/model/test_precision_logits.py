"""The precision policy on whole-model logits (issue 25): a 512-sub-layer Keel with trained-like
norm gains (a few AdamW steps: learned deviations from 1 of a few thousandths, about bf16's
spacing near 1) computes, on every bf16 path, the logits of its fp32 weights: FSDP2 bf16-mixed
through keelctl's shard_model, bf16 autocast, a Hugging Face export loaded in bf16. The same
check fails whenever the LN_out gains are bf16 (FSDP2 without the fp32 norm units, a bf16 HF
load with the gains cast, model.norm_dtype bf16), so it can see the fault it guards against."""

from __future__ import annotations

import copy

import pytest
import torch

from keelctl.model import ModelConfig, build_model

MAX_REL_L2, MIN_TOP1 = 0.02, 0.95  # against the fp32 weights' logits


def agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(relative L2 error of the logits, share of positions with the same top-1 token)."""
    got, want = got.double(), want.double()
    rel = float((got - want).norm() / want.norm())
    return rel, float((got.argmax(-1) == want.argmax(-1)).double().mean())


def matches_fp32(got: torch.Tensor, want: torch.Tensor) -> bool:
    rel, top1 = agreement(got, want)
    return rel <= MAX_REL_L2 and top1 >= MIN_TOP1


CFG = dict(residual="keel", vocab_size=257, d_model=16, n_heads=2, n_blocks=256, max_seq_len=32)


def train_three_steps(model, idx) -> None:
    """3 AdamW steps at LR 2e-3: the norms' gains move off 1 by more than bf16's spacing."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(3):
        logits = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def trained():
    """(model, tokens, fp32 logits): 512 sub-layers after 3 AdamW steps at LR 2e-3."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**CFG))
    assert model.config.n_sublayers == 512
    idx = torch.randint(0, 257, (2, 32))
    train_three_steps(model, idx)
    with torch.no_grad():
        return model.eval(), idx, model(idx)


def out_gains(model) -> torch.Tensor:
    return torch.cat([s.norm_out.weight.detach() for s in model.sublayers if s.norm_out])


def test_the_gains_are_trained_like(trained):
    """Small learned deviations from 1, not a random 5% spread (which hides the fault)."""
    deviation = (out_gains(trained[0]) - 1).abs()
    assert 0.002 < float(deviation.mean()) < 0.01 and float(deviation.max()) < 0.02


def test_bf16_autocast_matches_fp32(trained):
    model, idx, want = trained
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(idx)
    assert got.dtype == torch.bfloat16  # the branches and the head really ran in bf16
    assert matches_fp32(got, want), agreement(got, want)


def test_norm_dtype_bf16_fails_the_same_check(trained):
    """The simulated bf16 gains of the public implementations: same weights, LN_out rounded."""
    model, idx, want = trained
    rounded = build_model(ModelConfig(**CFG, norm_dtype="bf16")).eval()
    rounded.load_state_dict(model.state_dict())
    with torch.no_grad():
        got = rounded(idx)
    assert not matches_fp32(got, want), agreement(got, want)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """A one-process gloo group (a file store: no port to collide on) and its 1-D mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def sharded_logits(model, idx, shard) -> tuple[torch.Tensor, set]:
    """Logits of a sharded copy, and the dtypes its branch weights and LN_out gains had in use."""
    copied = copy.deepcopy(model)
    shard(copied)
    used = set()
    first = copied.sublayers[2]  # a Keel sub-layer: alpha = L, both norms
    first.branch.wq.register_forward_hook(lambda m, a, o: used.add(("wq", m.weight.dtype)))
    first.norm_out.register_forward_hook(lambda m, a, o: used.add(("gain", m.weight.dtype)))
    with torch.no_grad():
        return copied(idx), used


def test_fsdp2_bf16_mixed_matches_fp32(trained, mesh):
    from keelctl.train.parallel import shard_model

    model, idx, want = trained
    got, used = sharded_logits(model, idx, lambda m: shard_model(m, mesh, "bf16-mixed"))
    assert used == {("wq", torch.bfloat16), ("gain", torch.float32)}
    assert matches_fp32(got, want), agreement(got, want)


def test_fsdp2_bf16_mixed_with_embedding_norm_matches_fp32(mesh):
    """Peri-LN with LN_E, 512 sub-layers after 3 AdamW steps: the whole model's logits under
    shard_model's bf16-mixed match fp32, and LN_E's gain (its output is the stream itself)
    stays an fp32 unit like LN_out's."""
    from keelctl.train.parallel import shard_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**CFG, "residual": "peri_ln", "embedding_norm": True}))
    idx = torch.randint(0, 257, (2, 32))
    train_three_steps(model, idx)
    model.eval()
    with torch.no_grad():
        want = model(idx)
    used = set()
    shard_model(model, mesh, "bf16-mixed")
    model.norm_emb.register_forward_hook(lambda m, a, o: used.add((m.weight.dtype, o.dtype)))
    with torch.no_grad():
        got = model(idx)
    assert used == {(torch.float32, torch.float32)}
    assert matches_fp32(got, want), agreement(got, want)


def test_fsdp2_with_bf16_gains_fails_the_same_check(trained, mesh):
    """One bf16 unit per Block, norms included: keelctl's sharding before issue 25."""
    from torch.distributed.fsdp import fully_shard

    from keelctl.train.parallel import mixed_precision_policy

    def shard_all_bf16(m):
        for unit in [*m.blocks, m]:
            fully_shard(unit, mesh=mesh, mp_policy=mixed_precision_policy("bf16-mixed"))

    model, idx, want = trained
    got, used = sharded_logits(model, idx, shard_all_bf16)
    assert used == {("wq", torch.bfloat16), ("gain", torch.bfloat16)}
    assert not matches_fp32(got, want), agreement(got, want)


@pytest.fixture(scope="module")
def hf_folder(trained, tmp_path_factory):
    from keelctl.data.tokenizers import ByteTokenizer
    from keelctl.export import export_hf
    from keelctl.runs import Run

    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf-bf16")
    Run(root / "run").save_model(trained[0], ByteTokenizer())
    return export_hf(root / "run", root / "hf", context=32)


def load_bf16(folder):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, dtype=torch.bfloat16
    ).eval()


def test_hf_export_loaded_in_bf16_matches_fp32(trained, hf_folder):
    _, idx, want = trained
    hf = load_bf16(hf_folder)
    attn = hf.blocks[1].attn
    assert attn.branch.wq.weight.dtype == torch.bfloat16
    assert attn.norm_in.weight.dtype == attn.norm_out.weight.dtype == torch.float32
    with torch.no_grad():
        got = hf(idx).logits
    assert matches_fp32(got, want), agreement(got, want)


def test_hf_bf16_load_with_bf16_gains_fails_the_same_check(trained, hf_folder):
    _, idx, want = trained
    hf = load_bf16(hf_folder)
    for name, p in hf.named_parameters():
        if "norm" in name:
            p.data = p.data.to(torch.bfloat16)
    with torch.no_grad():
        got = hf(idx).logits
    assert not matches_fp32(got, want), agreement(got, want)
