"""Model FLOPs per token and model FLOPs utilisation (MFU).

Convention (Kaplan et al. 2020; PaLM appendix B), for one training token (forward + backward):

    flops_per_token = 6 * N + 12 * n_layer * d_model * seq_len

- N counts the parameters that take part in a matrix product: every parameter except the
  input token embedding (a table lookup, no FLOPs). The LM head is included, also when it is
  tied to the embedding; norm gains are included (negligible).
- n_layer is the number of attention sub-layers, i.e. Transformer blocks (= sub-layers / 2),
  as in the classic formula; 12 * d_model * seq_len per block is QK^T and attention*V,
  forward (4 d T) and backward (8 d T), counted for the full causal square (not halved).
- Activation-checkpointing recomputation is not counted: these are model FLOPs, not hardware
  FLOPs, so MFU is comparable with and without checkpointing.
"""

from __future__ import annotations

from torch import nn

# Dense (no sparsity) peak FLOP/s per precision, from the vendors' datasheets. Matched by
# substring of torch.cuda.get_device_name(), first match wins (so "H100 PCIe" before "H100").
# "32" is plain FP32 (no TF32): PyTorch's default for float32 matrix products.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16-mixed": 989e12, "32": 67e12}),
    ("H100 PCIe", {"bf16-mixed": 756e12, "32": 51e12}),
    ("H100", {"bf16-mixed": 989e12, "32": 67e12}),  # SXM / HBM3
    ("A100", {"bf16-mixed": 312e12, "32": 19.5e12}),
    ("L40S", {"bf16-mixed": 362e12, "32": 91.6e12}),
    ("L4", {"bf16-mixed": 121e12, "32": 30.3e12}),
)


def flops_params(model: nn.Module) -> int:
    """N of the formula: all parameters except the input token embedding; a tied head counts."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.tok_emb.weight
    tied = model.head.weight is emb
    return total if tied else total - emb.numel()


def flops_per_token(n_params: int, n_blocks: int, d_model: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N + 12 * n_blocks * d_model * seq_len (see module doc)."""
    return 6 * n_params + 12 * n_blocks * d_model * seq_len


def peak_flops(device_name: str, precision: str) -> float | None:
    """The device's dense peak FLOP/s at this precision, or None when it is not in the table."""
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return peaks.get(precision)
    return None


def mfu(flops_per_tok: int, tokens_per_s: float, peak: float | None) -> float | None:
    """Achieved model FLOP/s over the device's peak; None without a known peak."""
    return flops_per_tok * tokens_per_s / peak if peak else None
