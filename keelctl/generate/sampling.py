"""Choosing the next token from the logits: greedy at temperature 0, else temperature, top-k
and top-p (nucleus) filtering, then a draw from the softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from keelctl.errors import KeelError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int | None = None  # keep the k most likely tokens; None = all
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches p

    def __post_init__(self):
        if not self.temperature >= 0:  # also catches NaN
            raise KeelError(f"--temperature {self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise KeelError(f"--top-k {self.top_k} must be at least 1 (or left out: all tokens)")
        if not 0 < self.top_p <= 1:
            raise KeelError(f"--top-p {self.top_p} must be in (0, 1] (1 = no nucleus cut)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling()


def filter_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """(B, V) logits divided by the temperature, with tokens outside top-k / top-p at -inf."""
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= sampling.top_p  # the most likely token is always kept
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_tokens(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B,) next token ids from (B, V) logits."""
    if sampling.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, sampling).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
