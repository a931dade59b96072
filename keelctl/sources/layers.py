"""The decoder layers of a transformers causal LM, found from its module structure, and the
model with layers or their branches removed.

Removing block b (a decoder layer) replaces its forward by the identity on the residual stream;
removing sub-layer 2b (attention) or 2b+1 (MLP) zeroes that branch's output, which is the
identity for every residual branch the layer adds to the stream (x + F(x), x + norm(F(x)), and
the parallel x + F_attn(x) + F_mlp(x)). check_bypass verifies it on the loaded weights.

Cached suffix: `run(idx, removed, from_block=k, state=h)` feeds the stored stream h to block k
(block 0 returns h, blocks 1..k-1 pass it on), so only blocks k..L-1 compute. The model's own
forward still runs everything around the layers (masks, rotary tables, final norm, logit
soft-capping), so no family needs special code.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from keelctl.errors import KeelError

_ATTENTION = ("attn", "attention")
_MLP = ("mlp", "feed_forward", "ffn")


def find_decoder_layers(model: nn.Module, spec: str) -> tuple[str, nn.ModuleList]:
    """The ModuleList of identical layers holding the most parameters: the decoder stack."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(layer) for layer in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, module), size
    if best is None:
        raise KeelError(
            f"cannot find the decoder layers of {spec}: it has no list of identical layers "
            "(nn.ModuleList) holding parameters; keelctl needs a stack of decoder layers"
        )
    return best


def _child(block: nn.Module, words: tuple[str, ...]) -> nn.Module | None:
    found = [
        child
        for name, child in block.named_children()
        if any(w in f"{name} {type(child).__name__}".lower() for w in words)
        and not any(w in name.lower() for w in ("norm", "dropout", "drop"))
    ]
    return found[0] if len(found) == 1 else None


def find_branches(block: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(attention, MLP) children of a decoder layer, or None if either is not one module."""
    attn, mlp = _child(block, _ATTENTION), _child(block, _MLP)
    return None if attn is None or mlp is None else (attn, mlp)


def _stream(args: tuple, kwargs: dict) -> torch.Tensor:
    """The residual stream a decoder layer is called with (its first argument)."""
    return args[0] if args else kwargs["hidden_states"]


def _zero_output(module: nn.Module, args: tuple, out):
    if isinstance(out, tuple):
        return (torch.zeros_like(out[0]), *out[1:])
    return torch.zeros_like(out)


class HFModel(nn.Module):
    """A transformers causal LM as a SourceModel: logits with sub-layers removed, the stream
    entering every block, and the cached suffix. Sub-layer i is attention (i even) or MLP (i
    odd) of block i // 2."""

    def __init__(self, model: nn.Module, spec: str):
        super().__init__()
        self.model, self.spec = model, spec
        self.blocks = find_decoder_layers(model, spec)[1]
        self.branches = [find_branches(block) for block in self.blocks]
        self.n_blocks = len(self.blocks)
        self._tuple_out = False
        self._check_causal()

    @property
    def layers(self) -> list[nn.Module]:
        return list(self.blocks)

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def forward(self, idx: torch.Tensor, skip: Iterable[int] | None = None) -> torch.Tensor:
        return self.run(idx, set(skip or ()))

    def run(
        self,
        idx: torch.Tensor,
        removed: set[int] = frozenset(),
        from_block: int = 0,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits with sub-layers `removed`; from_block > 0 starts at that block from `state`
        (the stream entering it), skipping every block below."""
        bad = [i for i in removed if not 0 <= i < 2 * self.n_blocks]
        if bad:
            raise ValueError(f"skip indices {sorted(bad)} outside 0..{2 * self.n_blocks - 1}")
        with self._removed(removed, from_block, state):
            return self.model(input_ids=idx.to(self.input_device), use_cache=False).logits

    def capture(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits of the whole model, the stream entering each block plus the top block's
        output: n_blocks + 1 states)."""
        states: list = [None] * (self.n_blocks + 1)

        def entering(b, module, args, kwargs):
            states[b] = _stream(args, kwargs)

        def leaving(module, args, out):
            states[-1] = out[0] if isinstance(out, tuple) else out

        handles = [
            block.register_forward_pre_hook(partial(entering, b), with_kwargs=True)
            for b, block in enumerate(self.blocks)
        ]
        handles.append(self.blocks[-1].register_forward_hook(leaving))
        try:
            logits = self.run(idx)
        finally:
            for handle in handles:
                handle.remove()
        return logits, states

    def _passthrough(self, state: torch.Tensor | None):
        """A forward that returns `state` (or the stream it is given) in the layer's format."""

        def forward(*args, **kwargs):
            h = _stream(args, kwargs) if state is None else state
            return (h,) if self._tuple_out else h

        return forward

    @contextmanager
    def _removed(self, removed: set[int], from_block: int, state: torch.Tensor | None):
        patched, handles = [], []
        try:
            for b, block in enumerate(self.blocks):
                subs = sorted({2 * b, 2 * b + 1} & removed)
                if b < from_block or len(subs) == 2:
                    inject = state if b == 0 and from_block > 0 else None
                    patched.append((block, block.__dict__.get("forward")))
                    block.forward = self._passthrough(inject)  # an instance attribute wins
                elif subs:
                    if self.branches[b] is None:
                        raise KeelError(
                            f"{self.spec}: block {b} has no separate attention and MLP to "
                            "bypass; use --unit block"
                        )
                    branch = self.branches[b][subs[0] % 2]
                    handles.append(branch.register_forward_hook(_zero_output))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for block, old in patched:  # accelerate's device hooks live in the same attribute
                if old is None:
                    del block.forward
                else:
                    block.forward = old

    @torch.no_grad()
    def _check_causal(self) -> None:
        """Logits at a position may not depend on later tokens (an encoder-only model's do);
        also learns whether the layers return tuples."""
        vocab = self.model.get_input_embeddings().weight.shape[0]
        idx = torch.arange(8).remainder(vocab).repeat(2, 1)
        idx[1, -1] = (idx[1, -1] + 1) % vocab
        seen = []
        handle = self.blocks[0].register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            logits = self.run(idx).float()
        finally:
            handle.remove()
        self._tuple_out = isinstance(seen[0], tuple)
        if not torch.allclose(logits[0, :-1], logits[1, :-1], rtol=1e-3, atol=1e-4):
            raise KeelError(
                f"{self.spec} is not causal (a later token changes earlier logits); keelctl "
                "analyses decoder-only causal LMs"
            )

    @torch.no_grad()
    def check_bypass(self) -> None:
        """Zeroing both branches of every block must leave the stream unchanged; a layer that
        normalises after the residual sum (Post-LN) fails, and its sub-layers cannot be removed."""
        removed = {i for b, pair in enumerate(self.branches) if pair for i in (2 * b, 2 * b + 1)}
        ok = len(removed) == 2 * self.n_blocks
        if ok:
            handles = [m.register_forward_hook(_zero_output) for p in self.branches for m in p]
            try:
                states = self.capture(torch.zeros(1, 4, dtype=torch.long))[1]
            finally:
                for handle in handles:
                    handle.remove()
            ok = all(torch.allclose(s.float(), states[0].float()) for s in states[1:])
        if not ok:
            raise KeelError(
                f"--unit sublayer: the attention and MLP of {self.spec} cannot be bypassed one "
                "at a time (no separate branch added to the residual stream); use --unit block"
            )
