"""The decode loop shared by `keelctl generate` and the lm-eval adapter's generate_until.

Prompts longer than the context C lose tokens on the left. When prompt + new tokens would pass
C, the window slides: its oldest half is dropped and the rest encoded again (one prefill), so
every new token is predicted from the last C/2 to C tokens at positions the model was trained
on. Rows of a batch may have prompts of different lengths (left padding, masked out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from keelctl.errors import KeelError
from keelctl.generate.cache import KVCache
from keelctl.generate.sampling import GREEDY, Sampling, next_tokens
from keelctl.generate.step import lean_step


def cut_left(ids: Sequence[int], context: int) -> list[int]:
    """The last `context` tokens of a prompt (all of it when it fits)."""
    return list(ids[-context:])


def check_max_new_tokens(n: int) -> None:
    if n < 1:
        raise KeelError(f"--max-new-tokens {n} must be at least 1")


def branch_dtype(model: nn.Module) -> torch.dtype:
    """The dtype keys and values come out in: autocast's when it is on, else the weights'."""
    weight = next(model.parameters())
    if torch.is_autocast_enabled(weight.device.type):
        return torch.get_autocast_dtype(weight.device.type)
    return weight.dtype


def _last_logits(
    model: nn.Module, window: torch.Tensor, pad: torch.Tensor, capacity: int, use_cache: bool
) -> tuple[torch.Tensor, KVCache | None]:
    """Encode the whole window: the logits at its last position, and the filled cache."""
    if not use_cache and not bool(pad.any()):
        return model(window)[:, -1].float(), None
    cache = KVCache(
        model.config,
        window.shape[0],
        capacity if use_cache else window.shape[1],
        dtype=branch_dtype(model),
        device=window.device,
        pad=pad,
    )
    return model(window, cache=cache)[:, -1].float(), cache if use_cache else None


@torch.inference_mode()
def decode(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    context: int,
    eot_id: int,
    sampling: Sampling = GREEDY,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    stop: Callable[[list[int]], bool] | None = None,
) -> Iterator[list[int | None]]:
    """Generate from every prompt at once; yields, per step, each row's new token, or None for
    a row that has finished: at end-of-text (not yielded), when stop(row's tokens so far) is
    true (the token that made it true is yielded), or after max_new_tokens."""
    check_max_new_tokens(max_new_tokens)
    if context < 2:
        raise KeelError(f"a context of {context} tokens is too short to generate from")
    prompts = [cut_left(p, context) for p in prompts]
    if not all(prompts):
        raise ValueError("every prompt needs at least one token (e.g. end-of-text)")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    window = torch.full((len(prompts), width), eot_id, dtype=torch.long, device=device)
    for row, ids in enumerate(prompts):
        window[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
    pad = torch.tensor([width - len(p) for p in prompts], dtype=torch.long, device=device)
    finished = [False] * len(prompts)
    generated: list[list[int]] = [[] for _ in prompts]

    logits, cache = _last_logits(model, window, pad, context, use_cache)
    # cached one-token steps skip the model's module overhead where they can (step.py)
    one_token = (lean_step(model) if use_cache else None) or model
    for step in range(max_new_tokens):
        token = next_tokens(logits, sampling, generator)
        out: list[int | None] = []
        for row, tok in enumerate(token.tolist()):
            if finished[row] or tok == eot_id:
                finished[row] = True
                out.append(None)
                continue
            generated[row].append(tok)
            out.append(tok)
            finished[row] = stop is not None and stop(generated[row])
        yield out
        if all(finished) or step == max_new_tokens - 1:
            return
        token = token.masked_fill(torch.tensor(finished, device=device), eot_id).unsqueeze(1)
        if window.shape[1] == context:  # slide: keep the newest half, encode it again
            keep = context // 2
            pad = (pad - (context - keep)).clamp(min=0)
            window = torch.cat([window[:, -keep:], token], dim=1)
            logits, cache = _last_logits(model, window, pad, context, use_cache)
        else:
            window = torch.cat([window, token], dim=1)
            if cache is not None:
                logits = one_token(token, cache=cache)[:, -1].float()
            else:
                logits = _last_logits(model, window, pad, context, use_cache)[0]


def generate(model: nn.Module, prompts: Sequence[Sequence[int]], **kwargs) -> list[list[int]]:
    """decode() run to the end: the new tokens of each row (end-of-text not included)."""
    rows: list[list[int]] = [[] for _ in prompts]
    for step in decode(model, prompts, **kwargs):
        for row, tok in zip(rows, step, strict=True):
            if tok is not None:
                row.append(tok)
    return rows
