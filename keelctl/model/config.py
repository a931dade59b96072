"""ModelConfig: the typed description of one decoder-only LM.

Units: `n_blocks` counts Transformer blocks; each block has two sub-layers (attention, FFN),
and the paper's "layers" are sub-layers, so `n_sublayers = 2 * n_blocks`.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from keelctl.model.residual import sublayer_rules

Residual = Literal[
    "keel", "pre_ln", "post_ln", "deepnorm", "mix_ln", "hybridnorm", "peri_ln", "lns"
]
RESIDUALS: tuple[str, ...] = get_args(Residual)
# Keel's own keys at a value other than their default: meaningless for the schemes that
# postdate the paper, so asking for both is refused rather than silently ignored.
KEEL_ONLY_DEFAULTS = {"alpha": None, "keel_first_block": "v2", "keel_inner_norm": True}


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    vocab_size: int = Field(257, ge=2, description="output classes; >= the tokenizer's vocab")
    d_model: int = Field(128, ge=2, description="width of the residual stream")
    n_heads: int = Field(4, ge=1, description="query heads")
    n_kv_heads: int | None = Field(None, ge=1, description="key/value heads (GQA); None = n_heads")
    n_blocks: int = Field(4, ge=1, description="Transformer blocks; sub-layers = 2 * n_blocks")
    ffn: Literal["swiglu", "gelu"] = "swiglu"
    ffn_hidden: int | None = Field(None, ge=1, description="FFN width; None = 3 * d_model")
    rope_theta: float = Field(1e4, gt=0)
    tie_embeddings: bool = False
    norm_eps: float = Field(1e-5, gt=0)
    max_seq_len: int = Field(1024, ge=1)
    init_std: float = Field(0.02, gt=0)
    residual: Residual = "keel"
    alpha: float | None = Field(None, gt=0, description="keel skip scale; None = n_sublayers")
    keel_first_block: Literal["v2", "v1", "none"] = "v2"
    keel_inner_norm: bool = Field(
        True,
        description="Keel's LN_in; False = naive residual scaling x' = LN(alpha*x + F(x))",
    )
    final_norm: Literal["auto"] | bool = "auto"
    embedding_norm: bool = Field(
        False,
        description="RMSNorm (gain from 1) on the embedding output, x_0 = LN_E(E[t]): OLMo-core's "
        "embedding_norm; with peri_ln it puts the token at the scale of each normalised update",
    )
    mix_ln_fraction: float = Field(0.25, ge=0, le=1, description="mix_ln: share of Post-LN blocks")
    qkv_norm: Literal["auto"] | bool = Field(
        "auto", description="RMSNorm of q, k, v per head in attention; auto = on for hybridnorm"
    )
    # Simulated numerics of bf16 implementations (computed in fp32, rounded to bf16's precision;
    # docs/scale.md). fp32 is keelctl's precision policy.
    stream_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the stream and the skip sum rounded after each sub-layer"
    )
    norm_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the gains of the norms whose output is the stream rounded"
    )

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads {self.n_heads} must be divisible by n_kv_heads {self.kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim d_model/n_heads = {self.head_dim} must be even for RoPE")
        keel_keys = [k for k, v in KEEL_ONLY_DEFAULTS.items() if getattr(self, k) != v]
        if self.residual in ("peri_ln", "lns") and keel_keys:
            raise ValueError(
                f"Keel-only key(s) {', '.join(keel_keys)} do not apply to residual "
                f"{self.residual}; remove them"
            )
        if self.norm_dtype == "bf16":
            if not any(rule.norm_out for rule in sublayer_rules(self)):
                raise ValueError(
                    "norm_dtype bf16 rounds the gains of the norms whose output is the residual "
                    f"stream (LN_out), and residual {self.residual} has none here: use "
                    "norm_dtype fp32 (stream_dtype bf16 applies to every scheme)"
                )
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden(self) -> int:
        return self.ffn_hidden or 3 * self.d_model

    @property
    def n_sublayers(self) -> int:
        return 2 * self.n_blocks

    @property
    def uses_qkv_norm(self) -> bool:
        return self.residual == "hybridnorm" if self.qkv_norm == "auto" else self.qkv_norm

    @property
    def keel_alpha(self) -> float:
        """Keel's skip scale: alpha = L, the total number of sub-layers, unless overridden."""
        return float(self.alpha) if self.alpha is not None else float(self.n_sublayers)
