"""Text in, text out around the decode loop: the prompt (from a flag or a file), and streaming
the new text as tokens arrive without cutting a multi-byte character in half."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from keelctl.errors import KeelError
from keelctl.generate.decode import check_max_new_tokens, decode
from keelctl.generate.sampling import Sampling


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str | None:
    """The prompt text, or None to start a fresh document; one-line errors for bad input."""
    if prompt is not None and prompt_file is not None:
        raise KeelError("give --prompt or --prompt-file, not both")
    if prompt_file is not None:
        try:
            prompt = Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or "not UTF-8 text"
            raise KeelError(f"cannot read --prompt-file {prompt_file} ({why})") from None
        if not prompt:
            raise KeelError(f"--prompt-file {prompt_file} is empty; put the prompt text in it")
    elif prompt == "":
        raise KeelError("--prompt is empty; leave it out to start a fresh document")
    return prompt


def check_request(max_new_tokens: int, num_samples: int) -> None:
    check_max_new_tokens(max_new_tokens)
    if num_samples < 1:
        raise KeelError(f"--num-samples {num_samples} must be at least 1")


def prompt_ids(tokenizer, text: str | None) -> list[int]:
    """End-of-text then the prompt's tokens: the prompt starts a document, as in training."""
    return [tokenizer.eot_id, *(tokenizer.encode(text) if text else [])]


class TextStream:
    """Turns one row's tokens into text pieces; holds back an unfinished UTF-8 character."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # maybe the first bytes of a character: wait for the rest
            return ""
        return self.flush(text)

    def flush(self, text: str | None = None) -> str:
        text = self.tokenizer.decode(self.ids) if text is None else text
        piece, self.shown = text[self.shown :], len(text)
        return piece

    @property
    def text(self) -> str:
        return self.tokenizer.decode(self.ids)


def stream_samples(
    model: nn.Module,
    tokenizer,
    ids: list[int],
    *,
    num_samples: int,
    max_new_tokens: int,
    context: int,
    sampling: Sampling,
    seed: int | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """num_samples continuations of `ids`, decoded as one batch; on_text(sample, piece) gets
    the new text of each sample as it is generated. Returns the full new text per sample."""
    check_request(max_new_tokens, num_samples)
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    streams = [TextStream(tokenizer) for _ in range(num_samples)]
    steps: Iterator[list[int | None]] = decode(
        model,
        [ids] * num_samples,
        max_new_tokens=max_new_tokens,
        context=context,
        eot_id=tokenizer.eot_id,
        sampling=sampling,
        generator=generator,
    )
    for step in steps:
        for row, token in enumerate(step):
            if token is not None and (piece := streams[row].push(token)) and on_text:
                on_text(row, piece)
    for row, stream in enumerate(streams):
        if (piece := stream.flush()) and on_text:
            on_text(row, piece)
    return [s.text for s in streams]
