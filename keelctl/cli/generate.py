"""`keelctl generate`: sample text from a trained run with a KV cache (docs/generate.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from keelctl.cli.app import command


@command("generate")
def generate_command(
    run: Path = typer.Argument(..., help="Run dir (made by `keelctl train`)."),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Text to continue (default: start a fresh document)."
    ),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help="Read the prompt from this UTF-8 file."
    ),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="New tokens per sample."),
    temperature: float = typer.Option(
        0.8, "--temperature", help="Softmax temperature; 0 = greedy (argmax)."
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", help="Sample among the k most likely tokens only."
    ),
    top_p: float = typer.Option(
        1.0, "--top-p", help="Sample among the most likely tokens holding this much mass."
    ),
    num_samples: int = typer.Option(1, "--num-samples", help="Samples, generated as one batch."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling (default: random)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
) -> None:
    """Continue a prompt, streaming text as it is generated; stops at end-of-text."""
    from keelctl.eval.device import resolve_device
    from keelctl.generate import Sampling
    from keelctl.generate.text import check_request, prompt_ids, read_prompt, stream_samples
    from keelctl.runs import Run
    from keelctl.sources.keel import trained_context

    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    check_request(max_new_tokens, num_samples)
    text = read_prompt(prompt, prompt_file)
    opened = Run(run)
    context = trained_context(opened)
    model, tokenizer = opened.load_model(resolve_device(device))
    ids = prompt_ids(tokenizer, text)
    if len(ids) > context:
        typer.echo(
            f"note: the prompt has {len(ids)} tokens; only its last {context} are used "
            f"(the context {run} was trained at)",
            err=True,
        )

    def show(sample: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if num_samples == 1:
        sys.stdout.write(text or "")
    new_texts = stream_samples(
        model,
        tokenizer,
        ids,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        context=context,
        sampling=sampling,
        seed=seed,
        on_text=show if num_samples == 1 else None,
    )
    if num_samples == 1:
        sys.stdout.write("\n")
        return
    for i, new in enumerate(new_texts):
        sys.stdout.write(f"--- sample {i + 1} of {num_samples} ---\n{text or ''}{new}\n")
