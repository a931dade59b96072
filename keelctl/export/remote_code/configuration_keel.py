"""Configuration of an exported keelctl model (written by `keelctl export --format hf`).

The residual scheme travels as one rule per sub-layer (attention, FFN, attention, ...):
x' = LN_out(alpha * x + F(LN_in(x))), where a rule gives alpha and whether LN_in and LN_out
exist. Any scheme keelctl can express as such rules loads with this same code.
"""

from transformers import PretrainedConfig


class KeelConfig(PretrainedConfig):
    model_type = "keel"

    def __init__(
        self,
        vocab_size: int = 257,
        hidden_size: int = 128,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 4,
        num_hidden_layers: int = 4,  # blocks (attention + FFN); sub-layers = 2x this
        intermediate_size: int = 384,
        ffn: str = "swiglu",
        rope_theta: float = 1e4,
        rms_norm_eps: float = 1e-5,
        max_position_embeddings: int = 1024,
        # [{"alpha": a, "norm_in": b, "norm_out": c, "norm_branch": d, "in_scale": s}, ...]
        sublayer_rules: list | None = None,
        final_norm: bool = False,
        qkv_norm: bool = False,  # RMSNorm of q, k, v per head before RoPE (HybridNorm)
        embedding_norm: bool = False,  # RMSNorm on the embedding output (x_0 = LN_E(E[t]))
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.num_hidden_layers = num_hidden_layers
        self.head_dim = hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size
        self.ffn = ffn
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.sublayer_rules = sublayer_rules or [
            {"alpha": 1.0, "norm_in": True, "norm_out": False}
        ] * (2 * num_hidden_layers)
        self.final_norm = final_norm
        self.qkv_norm = qkv_norm
        self.embedding_norm = embedding_norm
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
