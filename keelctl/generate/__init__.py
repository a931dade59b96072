"""Generation: a preallocated KV cache (cache.py), sampling (sampling.py), the lean one-token
step (step.py) and the decode loop (decode.py) shared by `keelctl generate` and the lm-eval
adapter.

    from keelctl.generate import Sampling, generate
    new = generate(model, [prompt_ids], max_new_tokens=64, context=128, eot_id=tok.eot_id,
                   sampling=Sampling(temperature=0.8, top_p=0.95))
"""

from keelctl.generate.cache import KVCache, LayerKV
from keelctl.generate.decode import cut_left, decode, generate
from keelctl.generate.sampling import GREEDY, Sampling, filter_logits, next_tokens

__all__ = [
    "GREEDY",
    "KVCache",
    "LayerKV",
    "Sampling",
    "cut_left",
    "decode",
    "filter_logits",
    "generate",
    "next_tokens",
]
