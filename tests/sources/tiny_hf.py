"""Configs of tiny transformers models, one per family (tests/sources/conftest.py builds and
saves them with random weights; no download)."""

from __future__ import annotations

import transformers

VOCAB = 300
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    max_position_embeddings=64,
)
# family -> config; each built with 3 decoder layers (6 sub-layers)
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**SIZES),
    "qwen2": lambda: transformers.Qwen2Config(**SIZES),
    "qwen3": lambda: transformers.Qwen3Config(**SIZES),
    "mistral": lambda: transformers.MistralConfig(**SIZES),
    "gemma2": lambda: transformers.Gemma2Config(**SIZES, final_logit_softcapping=3.0),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(**SIZES, sliding_window=4),
    "olmo2": lambda: transformers.Olmo2Config(**SIZES),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=3, n_head=2, n_positions=64
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=64,
    ),
}
TEXT = [f"def f_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]
