"""The forward passes of layer ablation: the loss of the full model and of each removal, for a
keelctl Transformer and for a transformers model (keelctl.sources.layers.HFModel), plus the
per-layer stream measures taken on the way (StreamMeasures).

keelctl, method "cached": per batch the removals are visited in order of `start` while one
prefix state (the stream entering sub-layer `start`) advances a sub-layer at a time; a removal
runs only sub-layers stop..L-1 and the head from it. Memory: one prefix state.
transformers, method "cached": one pass stores the stream entering every block (n_blocks + 1
states per batch); a removal starting in block k runs blocks k..top from the stored state
(HFModel.run). Method "naive" runs the whole model per removal; same numbers, kept to check.
Passes are counted in sub-layers (a block = 2, also when one of its branches is zeroed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from keelctl.model.loss import token_nll

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
OnStep = Callable[[int, int], None] | None


class StreamMeasures:
    """Per layer (sub-layer, per=1, or block, per=2), token means of Block Influence
    1 - cos(x_in, x_out) (ShortGPT) and the relative update |x_out - x_in| / |x_in|."""

    def __init__(self, n_layers: int, per: int):
        self.per, self._in = per, None
        self.sums = torch.zeros(2, n_layers, dtype=torch.float64)
        self.tokens = torch.zeros(n_layers, dtype=torch.float64)

    def step(self, sublayer: int, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        """Sub-layer `sublayer` mapped x_in to x_out (called bottom-up along one pass)."""
        if sublayer % self.per == 0:
            self._in = x_in
        if sublayer % self.per == self.per - 1:
            self.add(sublayer // self.per, self._in, x_out)

    def add(self, layer: int, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        a = x_in.to(torch.promote_types(x_in.dtype, torch.float32))
        b = x_out.to(a.device, a.dtype)
        cos = F.cosine_similarity(a, b, dim=-1)
        rel = (b - a).norm(dim=-1) / a.norm(dim=-1)
        self.sums[0, layer] += (1 - cos).double().sum().item()
        self.sums[1, layer] += rel.double().sum().item()
        self.tokens[layer] += cos.numel()

    def means(self) -> tuple[list[float], list[float]]:
        """(block influence, relative update) per layer; NaN where none was measured."""
        block_influence, rel_update = (self.sums / self.tokens).tolist()  # 0 / 0 = NaN
        return block_influence, rel_update


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL: per token as the training loss's, summed in float64, on the CPU."""
    return token_nll(logits, targets.to(logits.device)).double().sum().cpu()


def _run(sublayers, x: torch.Tensor, first: int, measures: StreamMeasures | None) -> torch.Tensor:
    for i, sub in enumerate(sublayers, start=first):
        out = sub(x)
        if measures is not None:
            measures.step(i, x, out)
        x = out
    return x


@torch.no_grad()
def removal_losses(
    model,
    batches: Batches,
    removals: Sequence,
    *,
    method: str = "cached",
    on_step: OnStep = None,
    measures: StreamMeasures | None = None,
) -> tuple[float, list[float], int]:
    """keelctl Transformer: mean NLL per token of the full model and of each removal, and the
    sub-layer passes used; `batches` holds (inputs, targets) pairs of shape (B, T). The prefix
    chain runs every sub-layer once per batch, which is where `measures` are taken."""
    device = next(model.parameters()).device
    subs, n_sub = model.sublayers, model.config.n_sublayers
    order = sorted(range(len(removals)), key=lambda j: removals[j].start)
    nll = torch.zeros(len(removals) + 1, dtype=torch.float64)  # [-1] = full
    total, done, n_tokens = len(batches) * (len(removals) + 1), 0, 0
    for idx, targets in batches:
        idx = idx.to(device)
        n_tokens += targets.numel()
        h, at = model.embed(idx), 0  # cached: h is the residual stream entering sub-layer `at`
        for j in [*order, None]:  # None: the full model, after every removal
            if j is None:
                logits = model.logits(_run(subs[at:], h, at, measures))
            elif method == "naive":
                logits = model(idx, skip=range(removals[j].start, removals[j].stop))
            else:
                start = removals[j].start
                h, at = _run(subs[at:start], h, at, measures), start
                logits = model.logits(_run(subs[removals[j].stop :], h, removals[j].stop, None))
            nll[-1 if j is None else j] += nll_sum(logits, targets)
            done += 1
            if on_step:
                on_step(done, total)
    cut = (lambda r: n_sub - r.stop) if method == "cached" else (lambda r: n_sub - r.stop + r.start)
    passes = len(batches) * (n_sub + sum(cut(r) for r in removals))
    losses = (nll / n_tokens).tolist()
    return losses[-1], losses[:-1], passes


def _first_block(start: int, removed: set[int]) -> int:
    """The lowest block a removal starting at sub-layer `start` must compute."""
    k = start // 2
    while {2 * k, 2 * k + 1} <= removed:
        k += 1
    return k


@torch.no_grad()
def hf_removal_losses(
    model,
    batches: Batches,
    removals: Sequence,
    *,
    method: str = "cached",
    on_step: OnStep = None,
    measures: StreamMeasures | None = None,
) -> tuple[float, list[float], int]:
    """The same for a keelctl.sources.layers.HFModel; `measures` are taken per block (from the
    stored states; a transformers layer exposes no stream between its attention and MLP)."""
    n_blocks = model.n_blocks
    nll = torch.zeros(len(removals) + 1, dtype=torch.float64)
    total, done, n_tokens, block_passes = len(batches) * (len(removals) + 1), 0, 0, 0
    for idx, targets in batches:
        n_tokens += targets.numel()
        logits, states = model.capture(idx)
        nll[-1] += nll_sum(logits, targets)
        block_passes += n_blocks
        if measures is not None and measures.per == 2:
            for b in range(n_blocks):
                measures.add(b, states[b], states[b + 1])
        for j, r in enumerate(removals):
            removed = set(range(r.start, r.stop))
            if method == "naive":
                logits = model.run(idx, removed)
                block_passes += n_blocks - sum(
                    {2 * b, 2 * b + 1} <= removed for b in range(n_blocks)
                )
            else:
                k = _first_block(r.start, removed)
                logits = model.run(idx, removed, k, states[r.start // 2])
                block_passes += (
                    n_blocks - k - sum({2 * b, 2 * b + 1} <= removed for b in range(k, n_blocks))
                )
            nll[j] += nll_sum(logits, targets)
            done += 1
            if on_step:
                on_step(done, total)
        done += 1
        if on_step:
            on_step(done, total)
    losses = (nll / n_tokens).tolist()
    return losses[-1], losses[:-1], 2 * block_passes
