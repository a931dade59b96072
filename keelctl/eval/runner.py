"""`keelctl eval`: perplexity on held-out text plus lm-eval tasks for one or more model sources
(run dirs, transformers folders, hf:NAME[@REVISION]; keelctl.sources).

Everything a request can get wrong (device, sources, task names, output path) is checked
before any model runs. The report is lm-eval's results layout per run plus keelctl's own
`perplexity` entry, model path, config hash and date (docs/eval.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from keelctl.atomic import atomic_write_json
from keelctl.errors import KeelError
from keelctl.eval.device import resolve_device
from keelctl.eval.perplexity import token_perplexity
from keelctl.runs import CONFIG_YAML, Run, heldout_data
from keelctl.sources import open_source


def heldout_spec(run: Path | Run, data: str | None) -> tuple[str, dict]:
    """(corpus spec, load_documents keywords): the run's data section, with SPEC swapped in."""
    run = run if isinstance(run, Run) else Run(run)
    unknown = f"{run.path / CONFIG_YAML} is missing, so the run's validation split is unknown"
    cfg = heldout_data(run.data_config(), data, unknown)
    kwargs = dict(
        val_fraction=cfg.val_fraction,
        text_field=cfg.text_field,
        hf_split=cfg.split,
        max_bytes=cfg.max_bytes,
    )
    return cfg.corpus, kwargs


def heldout_documents(
    run: Run, data: str | None, tokenizer, text_cache: dict
) -> tuple[str, list[list[int]], int]:
    """(what is scored, its documents as token ids, their UTF-8 bytes). Without --data, the
    run's validation split comes from its token store (found by the corpus's cheap
    fingerprint, prepared once if missing), so the corpus text is not read again; with
    --data SPEC, SPEC's validation documents are read and encoded (cached across runs)."""
    from keelctl.data import load_documents, prepare_data_section
    from keelctl.eval.perplexity import split_documents

    spec, kwargs = heldout_spec(run, data)
    if data is None:
        prepared = prepare_data_section(run.data_config(), tokenizer)
        docs = split_documents(prepared.val[:], tokenizer.eot_id)
        return spec, docs, int(prepared.meta["splits"]["val"]["bytes"])
    key = (spec, *sorted(kwargs.items()))
    if key not in text_cache:
        text_cache[key] = load_documents(spec, "val", **kwargs)
    texts = text_cache[key]
    docs = [tokenizer.encode(doc) for doc in texts]
    return spec, docs, sum(len(doc.encode("utf-8")) for doc in texts)


def check_output(path: Path | None) -> None:
    """Fail before any work if the report could not be written to `path`."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise KeelError(f"--output {path} is a directory; give a file name such as eval.json")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KeelError(
            f"--output {path}: cannot create {parent} ({e.strerror}); choose a writable location"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KeelError(f"--output {path}: {parent} is not writable; choose a writable location")


def write_report(path: Path, report: dict) -> None:
    try:
        atomic_write_json(path, report)
    except OSError as e:
        raise KeelError(f"cannot write {path} ({e.strerror}); choose a writable location") from None


def evaluate_runs(
    run_dirs: Sequence[str | Path],
    *,
    data: str | None = None,
    tasks: Sequence[str] = (),
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 8,
    device: str | None = None,
    output: Path | None = None,
    dtype: str = "float32",
    device_map: str | None = None,
) -> dict:
    """Evaluate each source; returns (and writes to `output`, atomically) the report."""
    from keelctl import __version__

    if batch_size < 1:
        raise KeelError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit <= 0:
        raise KeelError(f"--limit must be positive, got {limit}")
    torch_device = resolve_device(device)
    sources = [open_source(r, dtype=dtype, device_map=device_map) for r in run_dirs]
    for source in sources:  # a source without a validation split needs --data: say so first
        if source.kind == "transformers" and data is None:
            raise KeelError(
                f"{source.spec}: a transformers model has no validation split; pass --data SPEC"
            )
        heldout_spec(_run(source), data)
    if tasks:
        from keelctl.eval.harness import resolve_tasks

        resolve_tasks(list(tasks))
    check_output(output)

    limit = int(limit) if limit is not None and limit >= 1 else limit
    texts: dict[tuple, list[str]] = {}
    runs = []
    for source in sources:
        model = source.load(torch_device)
        entry = _perplexity_entry(source, model, data, texts, batch_size)
        if tasks:
            from keelctl.eval.harness import run_tasks

            lm = _task_model(source, model, batch_size)
            entry.update(run_tasks(lm, list(tasks), num_fewshot=num_fewshot, limit=limit))
        runs.append(entry)
        del model

    report = {
        "keelctl_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "data": data,
            "tasks": list(tasks),
            "num_fewshot": num_fewshot,
            "limit": limit,
            "batch_size": batch_size,
            "device": str(torch_device) if device_map is None else f"{device_map} (transformers)",
            "dtype": dtype,
        },
        "runs": runs,
    }
    if output is not None:
        write_report(output, report)
    return report


def _perplexity_entry(source, model, data: str | None, texts: dict, batch_size: int) -> dict:
    """The report entry of one source: what it is and its held-out perplexity."""
    tokenizer = source.tokenizer
    spec, docs, n_bytes = heldout_documents(_run(source), data, tokenizer, texts)
    return {
        **source.info(),
        "source": source.kind,
        "residual" if source.kind == "keelctl" else "model_type": source.family,
        "context": source.context,
        "perplexity": {
            "data": spec,
            "split": "val",
            **token_perplexity(
                model,
                docs,
                n_bytes=n_bytes,
                eot_id=tokenizer.eot_id,
                batch_size=batch_size,
                max_len=source.context,
            ),
        },
    }


def _run(source) -> Run:
    """A run source's Run (its recipe read once); a transformers source as a Run without one."""
    return source.run if source.kind == "keelctl" else Run(source.spec)


def _task_model(source, model, batch_size: int):
    """The lm-eval model: keelctl's adapter for a run, lm-eval's own HFLM for transformers."""
    if source.kind == "transformers":
        from lm_eval.models.huggingface import HFLM

        return HFLM(
            pretrained=model.model,
            tokenizer=source.hf_tokenizer,
            batch_size=batch_size,
            max_length=source.context,
        )
    from keelctl.eval.lm_eval_adapter import KeelLM

    return KeelLM.from_model(
        model.model, source.tokenizer, batch_size=batch_size, max_length=source.context
    )


def _number(value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value) or abs(value) >= 1e5:
        return f"{value:.3g}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def summary_rows(report: dict) -> list[tuple[str, list[str]]]:
    """(row label, one cell per run): perplexity rows, then each task metric (± stderr)."""
    runs = report["runs"]
    rows = [
        ("held-out ppl", [_number(r["perplexity"]["ppl"]) for r in runs]),
        ("held-out bits/byte", [_number(r["perplexity"]["bits_per_byte"]) for r in runs]),
        ("held-out tokens", [_number(r["perplexity"]["tokens"]) for r in runs]),
    ]
    labels = []
    for r in runs:
        for task, metrics in r.get("results", {}).items():
            labels += [(task, m) for m in metrics if "," in m and "_stderr," not in m]
    for task, metric in dict.fromkeys(labels):
        name, filt = metric.split(",", 1)
        cells = []
        for r in runs:
            metrics = r.get("results", {}).get(task, {})
            value, err = metrics.get(metric), metrics.get(f"{name}_stderr,{filt}")
            cell = _number(value) if value is not None else "-"
            cells.append(cell + (f" ± {_number(err)}" if isinstance(err, float) else ""))
        label = f"{task} {name}" + ("" if filt == "none" else f" ({filt})")
        rows.append((label, cells))
    return rows
