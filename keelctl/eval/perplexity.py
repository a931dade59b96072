"""Held-out perplexity with rolling windows: every token of a document is predicted exactly once.

Windows come from lm-eval's `get_rolling_token_windows` + `make_disjoint_window`: the first
window predicts up to `max_len` tokens after the prefix (end-of-text) token; each later window
predicts the next `max_len - context_len + 1` tokens conditioned on at least `context_len - 1`
tokens before them. keelctl's default `context_len` is half the context (a stride of max_len/2).

    from keelctl.eval.perplexity import corpus_perplexity
    stats = corpus_perplexity(model, tokenizer, docs, batch_size=8)
    stats["ppl"], stats["bits_per_byte"]

Pass `skip=[i, ...]` to score the model with those sub-layers removed (layer ablation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn

from keelctl.errors import KeelError
from keelctl.model.loss import token_nll


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def token_scores(
    model: nn.Module, tokens: torch.Tensor, skip: Iterable[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(tokens[:, t+1] | tokens[:, :t+1]), whether that token was the argmax), each (B, T-1).

    Log-probabilities are the training loss's (keelctl.model.loss), in float32 or wider."""
    logits = model(tokens[:, :-1], skip=skip)
    targets = tokens[:, 1:]
    return -token_nll(logits, targets), logits.argmax(-1) == targets


def sequence_nll(
    model: nn.Module, tokens: torch.Tensor, skip: Iterable[int] | None = None
) -> torch.Tensor:
    """Per-token negative log-likelihood in nats of tokens[:, 1:] given the prefix: (B, T-1)."""
    return -token_scores(model, tokens, skip)[0]


def score_sequences(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    n_scored: Sequence[int],
    *,
    pad_id: int,
    skip: Iterable[int] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One forward on the right-padded `seqs`; for each, the log-probs of its last n_scored
    tokens and whether each was the argmax. Padding sits after every scored position, so a
    causal model gives the same numbers as scoring each sequence alone."""
    width = max(len(s) for s in seqs)
    batch = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        batch[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    logp, greedy = token_scores(model, batch.to(model_device(model)), skip)
    out = []
    for row, (seq, n) in enumerate(zip(seqs, n_scored, strict=True)):
        end = len(seq) - 1  # position of the last prediction
        out.append((logp[row, end - n : end].cpu(), greedy[row, end - n : end].cpu()))
    return out


def rolling_windows(
    tokens: Sequence[int], prefix_id: int, max_len: int, context_len: int | None = None
) -> list[tuple[list[int], int]]:
    """(sequence to feed, number of its last tokens to score) covering `tokens` exactly once.

    Each sequence is at most max_len + 1 long (max_len inputs, the last token is only a target);
    context_len defaults to max_len // 2."""
    context_len = max(1, max_len // 2) if context_len is None else context_len
    if not 1 <= context_len <= max_len:
        raise KeelError(f"rolling context {context_len} must be between 1 and {max_len}")
    windows = []
    for pair in get_rolling_token_windows(list(tokens), prefix_id, max_len, context_len):
        context, continuation = make_disjoint_window(pair)
        windows.append((context + continuation, len(continuation)))
    return windows


def score_windows(
    model: nn.Module,
    windows: Sequence[tuple[Sequence[int], int]],
    *,
    batch_size: int,
    pad_id: int,
    skip: Iterable[int] | None = None,
) -> list[float]:
    """Summed log-probability of the scored tokens of each window, batched longest first."""
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    sums = [0.0] * len(windows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        scored = score_sequences(
            model,
            [windows[i][0] for i in chunk],
            [windows[i][1] for i in chunk],
            pad_id=pad_id,
            skip=skip,
        )
        for i, (logp, _) in zip(chunk, scored, strict=True):
            sums[i] = logp.double().sum().item()
    return sums


def corpus_perplexity(
    model: nn.Module,
    tokenizer,
    docs: Sequence[str],
    *,
    batch_size: int = 8,
    max_len: int | None = None,
    context_len: int | None = None,
    skip: Iterable[int] | None = None,
) -> dict:
    """token_perplexity of text documents, each encoded with `tokenizer`."""
    return token_perplexity(
        model,
        [tokenizer.encode(doc) for doc in docs],
        n_bytes=sum(len(doc.encode("utf-8")) for doc in docs),
        eot_id=tokenizer.eot_id,
        batch_size=batch_size,
        max_len=max_len,
        context_len=context_len,
        skip=skip,
    )


def split_documents(tokens: Sequence[int], eot_id: int) -> list[list[int]]:
    """A token store's stream (every document followed by eot_id) back into documents."""
    ends = np.flatnonzero(np.asarray(tokens) == eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    return [np.asarray(tokens[a:b]).tolist() for a, b in zip(starts, ends, strict=True)]


def token_perplexity(
    model: nn.Module,
    docs: Sequence[Sequence[int]],
    *,
    n_bytes: int,
    eot_id: int,
    batch_size: int = 8,
    max_len: int | None = None,
    context_len: int | None = None,
    skip: Iterable[int] | None = None,
) -> dict:
    """Token-level NLL (nats), perplexity and bits per UTF-8 byte of tokenized documents, each
    scored on its own (after an end-of-text token) with rolling windows on the model's device.

    bits_per_byte = total NLL / ln 2 / n_bytes (the documents' UTF-8 bytes), comparable
    across tokenizers."""
    if batch_size < 1:
        raise KeelError(f"batch size must be at least 1, got {batch_size}")
    max_len = max_len or model.config.max_seq_len
    skip = list(skip or ())
    windows = []
    for ids in docs:
        windows += rolling_windows(list(ids), eot_id, max_len, context_len)
    n_tokens = sum(n for _, n in windows)
    if n_tokens == 0:
        raise KeelError("no text to score: the held-out documents are empty; pass other --data")
    logp = score_windows(model, windows, batch_size=batch_size, pad_id=eot_id, skip=skip)
    total_nll = -sum(logp)
    nll = total_nll / n_tokens
    return {
        "nll": nll,
        "ppl": math.exp(nll) if nll < 700 else math.inf,
        "bits_per_byte": total_nll / math.log(2) / max(n_bytes, 1),
        "tokens": n_tokens,
        "bytes": n_bytes,
        "documents": len(docs),
    }
