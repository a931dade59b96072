"""Layer redundancy (the paper's appendix A): remove one layer at a time from a trained model
(x' = x for its sub-layers) and measure the rise in perplexity on fixed held-out tokens. A layer
is a sub-layer (the paper's unit) or a block; `range_size` K removes K consecutive layers.

Method "cached": every removal is a contiguous run of sub-layers [start, stop). Per batch, the
removals are visited in order of `start` while one prefix state (the residual stream entering
sub-layer `start`) advances a sub-layer at a time; each removal runs only sub-layers stop..L-1
and the head from it. The prefix costs L passes per batch (and gives the full model's loss), a
removal L - stop instead of the naive L - (stop - start): about half in total. Memory is one
prefix state, one suffix state and one batch of logits at any depth: no per-layer cache.
Method "naive" calls model(idx, skip=...) per removal; same numbers, kept to check and time.
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from keelctl.errors import KeelError
from keelctl.eval.context import trained_context
from keelctl.eval.device import resolve_device
from keelctl.model import ModelConfig, Transformer
from keelctl.runs import (
    CONFIG_YAML,
    atomic_path,
    atomic_write_json,
    load_model,
    read_model_meta,
)

UNITS = ("sublayer", "block")
METHODS = ("cached", "naive")
COLUMNS = tuple("run scheme n_sublayers unit layer kind ppl dppl rel_dppl dloss removed".split())
_SPEC_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class Removal:
    """Layer `layer` (in the chosen unit) removed: sub-layers start..stop-1 become x' = x."""

    layer: int
    kind: str  # attn | ffn | block | range
    start: int
    stop: int

    @property
    def removed(self) -> str:
        return str(self.start) if self.stop - self.start == 1 else f"{self.start}-{self.stop - 1}"


@dataclass
class RunAblation:
    """The losses of one run: the full model and every removal, on the same tokens."""

    run: str
    scheme: str
    n_sublayers: int
    unit: str
    full_loss: float
    removals: list[Removal]
    losses: list[float]
    # range_size, tokens, seq_len, method, seconds, sublayer_passes, device, batch_size, data
    info: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.n_sublayers if self.unit == "sublayer" else self.n_sublayers // 2

    @property
    def full_ppl(self) -> float:
        return _ppl(self.full_loss)

    def rows(self) -> list[dict]:
        """One row per removal, columns COLUMNS (the full model is `full_row`)."""
        return [
            self._row(r.layer, r.kind, loss, r.removed)
            for r, loss in zip(self.removals, self.losses, strict=True)
        ]

    def full_row(self) -> dict:
        return self._row(None, "full", self.full_loss, "")

    def _row(self, layer: int | None, kind: str, loss: float, removed: str) -> dict:
        ppl, full = _ppl(loss), self.full_ppl
        values = (
            self.run,
            self.scheme,
            self.n_sublayers,
            self.unit,
            layer,
            kind,
            ppl,
            ppl - full,
            (ppl - full) / full,
            loss - self.full_loss,
            removed,
        )
        return dict(zip(COLUMNS, values, strict=True))


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 709 else math.inf


def parse_layers(spec: str, n_layers: int, unit: str) -> list[int]:
    """'0-7,12' -> [0, ..., 7, 12]; every index must lie in 0..n_layers-1."""
    out: set[int] = set()
    for item in spec.replace(" ", "").split(","):
        m = _SPEC_ITEM.match(item)
        if not m:
            raise KeelError(f"bad --layers {spec!r}: {item!r} is not N or N-M; use e.g. '0-7,12'")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if hi < lo:
            raise KeelError(f"bad --layers {spec!r}: range {item} runs backwards; write {hi}-{lo}")
        if hi >= n_layers:
            raise KeelError(
                f"--layers {spec!r}: {unit} {hi} is out of range; this model has "
                f"{n_layers} {unit}s (0..{n_layers - 1})"
            )
        out.update(range(lo, hi + 1))
    return sorted(out)


def plan_removals(
    cfg: ModelConfig, unit: str, layers: str | None = None, range_size: int = 1
) -> list[Removal]:
    """The removals to evaluate: each chosen layer (or the range of K layers it starts)."""
    check_options(unit=unit, range_size=range_size)
    per = 1 if unit == "sublayer" else 2
    n_layers = cfg.n_sublayers // per
    if range_size > n_layers:
        raise KeelError(f"--range-size {range_size} exceeds the model's {n_layers} {unit}s")
    starts = (
        range(n_layers - range_size + 1) if layers is None else parse_layers(layers, n_layers, unit)
    )
    last = n_layers - range_size
    if starts and starts[-1] > last:
        raise KeelError(
            f"--layers: a range of {range_size} {unit}s starting at {starts[-1]} runs "
            f"past the last {unit} ({n_layers - 1}); start at {last} or earlier"
        )

    def kind(i: int) -> str:  # sub-layers alternate attention, FFN (Transformer.sublayers)
        if range_size > 1:
            return "range"
        return ("attn", "ffn")[i % 2] if unit == "sublayer" else "block"

    return [Removal(i, kind(i), i * per, (i + range_size) * per) for i in starts]


def check_options(
    *,
    unit: str = "sublayer",
    range_size: int = 1,
    tokens: int = 1,
    batch_size: int = 1,
    method: str = "cached",
    threshold: float = 0.0,
    output_dir: Path | None = None,
) -> None:
    """One-line KeelErrors for bad options, before any model runs (output_dir is created)."""
    if unit not in UNITS:
        raise KeelError(f"unknown --unit {unit!r}; use 'sublayer' (the paper's layers) or 'block'")
    if method not in METHODS:
        raise KeelError(f"unknown --method {method!r}; use 'cached' or 'naive'")
    sizes = {"--range-size": range_size, "--tokens": tokens, "--batch-size": batch_size}
    for name, value in sizes.items():
        if value < 1:
            raise KeelError(f"{name} must be at least 1, got {value}")
    if threshold < 0:
        raise KeelError(f"--threshold is a relative PPL change and must be >= 0, got {threshold}")
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True) if output_dir else None
    except OSError as e:
        raise KeelError(
            f"cannot create --output-dir {output_dir} ({e.strerror}); pick another"
        ) from e


def eval_batches(tokens: np.ndarray, seq_len: int, n_tokens: int, batch_size: int) -> DataLoader:
    """Batches of (x, y): the first n_tokens // seq_len consecutive windows of `tokens`, the
    same windows as the training run's validation (keelctl.data.ValWindows)."""
    from keelctl.data import ValWindows

    if n_tokens < seq_len:
        raise KeelError(
            f"--tokens {n_tokens} is less than one window of {seq_len} tokens; "
            f"pass --tokens {seq_len} or more"
        )
    return DataLoader(ValWindows(tokens, seq_len, n_tokens), batch_size=batch_size)


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL: per token in at least fp32, summed in float64."""
    logits = logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets.flatten(), reduction="none").double().sum()


@torch.no_grad()
def removal_losses(
    model: Transformer,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    removals: Sequence[Removal],
    *,
    method: str = "cached",
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[float, list[float], int]:
    """Mean NLL per token of the full model and of each removal, and the sub-layer passes used;
    `batches` holds (inputs, targets) pairs of shape (B, T)."""
    check_options(method=method)
    device = next(model.parameters()).device
    subs, n_sub = model.sublayers, model.config.n_sublayers
    order = sorted(range(len(removals)), key=lambda j: removals[j].start)
    nll = torch.zeros(len(removals) + 1, dtype=torch.float64, device=device)  # [-1] = full
    total, done, n_tokens = len(batches) * (len(removals) + 1), 0, 0
    for idx, targets in batches:
        idx, targets = idx.to(device), targets.to(device)
        n_tokens += targets.numel()
        h, at = model.embed(idx), 0  # cached: h is the residual stream entering sub-layer `at`
        for j in [*order, None]:  # None: the full model, after every removal
            if j is None:
                logits = model.logits(_run(subs[at:], h))
            elif method == "naive":
                logits = model(idx, skip=range(removals[j].start, removals[j].stop))
            else:
                h, at = _run(subs[at : removals[j].start], h), removals[j].start
                logits = model.logits(_run(subs[removals[j].stop :], h))
            nll[-1 if j is None else j] += nll_sum(logits, targets)
            done += 1
            if on_step:
                on_step(done, total)
    cut = (lambda r: n_sub - r.stop) if method == "cached" else (lambda r: n_sub - r.stop + r.start)
    passes = len(batches) * (n_sub + sum(cut(r) for r in removals))
    losses = (nll / n_tokens).tolist()
    return losses[-1], losses[:-1], passes


def _run(sublayers: Sequence[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    for sub in sublayers:
        x = sub(x)
    return x


def data_settings(runs: Sequence[Path], data: str | None) -> list:
    """Each run's DataConfig for evaluation. Default: the run's own (config.yaml), i.e. its
    validation split. With --data, the first run's settings with the corpus replaced, for every
    run, so that runs sharing a tokenizer are scored on identical tokens."""
    from keelctl.config import DataConfig, load_recipe

    recipes = [load_recipe(r / CONFIG_YAML) if (r / CONFIG_YAML).is_file() else None for r in runs]
    if data is not None:
        first = recipes[0].data if recipes[0] else DataConfig()
        return [first.model_copy(update={"corpus": data})] * len(runs)
    for run, recipe in zip(runs, recipes, strict=True):
        if recipe is None:
            raise KeelError(
                f"{run / CONFIG_YAML} is missing, so the run's validation corpus "
                "is unknown; pass --data SPEC"
            )
    return [r.data for r in recipes]


def eval_tokens(d, tokenizer) -> np.ndarray:
    """The validation tokens of DataConfig `d` under the run's tokenizer (token cache)."""
    from keelctl.data import prepare_data_section

    return prepare_data_section(d, tokenizer).val


def ablate(
    runs: Sequence[str | Path],
    *,
    unit: str = "sublayer",
    layers: str | None = None,
    range_size: int = 1,
    data: str | None = None,
    tokens: int = 65536,
    batch_size: int = 8,
    device: str = "auto",
    method: str = "cached",
    on_step: Callable[[str, int, int], None] | None = None,
) -> list[RunAblation]:
    """Ablate every run on the same evaluation tokens. Arguments are checked for all runs
    before the first forward pass, so a bad layer or run fails fast. on_step(run, done, total)
    reports progress over one run's (removal, batch) evaluations."""
    check_options(
        unit=unit, range_size=range_size, tokens=tokens, batch_size=batch_size, method=method
    )
    dev = resolve_device(device)
    runs = [Path(run) for run in runs]
    metas = [read_model_meta(run) for run in runs]
    plans = [plan_removals(cfg, unit, layers, range_size) for cfg, _ in metas]  # cheap checks
    loaders = [  # each run scored at the context it was trained at (its own data.seq_len)
        eval_batches(eval_tokens(d, tok), trained_context(run), tokens, batch_size)
        for run, (_, tok), d in zip(runs, metas, data_settings(runs, data), strict=True)
    ]
    results = []
    for run_dir, removals, batches in zip(runs, plans, loaders, strict=True):
        model = load_model(run_dir, dev)[0]  # one model in memory at a time
        name = str(run_dir)
        step = (lambda done, total, name=name: on_step(name, done, total)) if on_step else None
        t0 = time.perf_counter()
        full, losses, passes = removal_losses(model, batches, removals, method=method, on_step=step)
        info = dict(
            range_size=range_size,
            tokens=batches.dataset.n_predicted,
            seq_len=batches.dataset.seq_len,
            method=method,
            seconds=time.perf_counter() - t0,
            sublayer_passes=passes,
            device=str(dev),
            batch_size=batch_size,
            data=data or "the run's validation split",
        )
        cfg = model.config
        results.append(
            RunAblation(name, cfg.residual, cfg.n_sublayers, unit, full, removals, losses, info)
        )
    return results


def summarize(res: RunAblation, threshold: float = 0.01, top: int = 3) -> dict:
    """Most/least redundant layers and the effective depth: the number of evaluated layers
    whose removal raises PPL by more than `threshold` (relative)."""
    rows = sorted(res.rows(), key=lambda r: r["dppl"])

    def pick(rs: list[dict]) -> list[dict]:
        return [{k: r[k] for k in ("layer", "kind", "dppl", "rel_dppl")} for r in rs]

    return {
        "run": res.run,
        "scheme": res.scheme,
        "n_sublayers": res.n_sublayers,
        "unit": res.unit,
        "full_ppl": res.full_ppl,
        "threshold": threshold,
        "effective_depth": sum(r["rel_dppl"] > threshold for r in rows),
        "evaluated": len(rows),
        "n_layers": res.n_layers,
        "most_redundant": pick(rows[:top]),
        "least_redundant": pick(rows[::-1][:top]),
    }


def write_outputs(
    results: Sequence[RunAblation], out_dir: str | Path, threshold: float = 0.01
) -> list[Path]:
    """ablation.csv, ablation.json and ablation.png in out_dir, each written atomically."""
    from keelctl.analysis.plots import AblationCurve, ablation_figure

    out_dir = Path(out_dir)
    csv_path, json_path, png_path = (out_dir / f"ablation.{e}" for e in ("csv", "json", "png"))
    rows = [row for res in results for row in (res.full_row(), *res.rows())]
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    runs = [summarize(res, threshold) | {"full_loss": res.full_loss, **res.info} for res in results]
    atomic_write_json(json_path, {"columns": list(COLUMNS), "runs": runs, "rows": rows})
    curves = [
        AblationCurve(
            label=f"{Path(res.run).name} ({res.scheme}, L={res.n_sublayers} sub-layers)",
            layers=[r.layer for r in res.removals],
            dppl=[r["dppl"] for r in res.rows()],
            n_layers=res.n_layers,
            threshold=threshold * res.full_ppl,
        )
        for res in results
    ]
    fig = ablation_figure(
        curves,
        unit=results[0].unit,
        range_size=results[0].info.get("range_size", 1),
        threshold_label=f"effective-depth threshold ({threshold * 100:g}% of full PPL)",
    )
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return [csv_path, json_path, png_path]
