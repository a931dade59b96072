"""Layer redundancy (the paper's appendix A): remove one layer at a time from a trained model
(x' = x for its sub-layers) and measure the rise in perplexity on fixed held-out tokens, for any
model source (a keelctl run or a transformers causal LM, keelctl.sources). A layer is a
sub-layer (the paper's unit: one attention or one MLP) or a block; `range_size` K removes K
consecutive layers. On the same pass, per layer: Block Influence 1 - cos(x_in, x_out) and the
relative update |x_out - x_in| / |x_in| (token means). The passes themselves: removal.py.
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from keelctl.analysis.removal import StreamMeasures, hf_removal_losses, removal_losses
from keelctl.atomic import atomic_path, atomic_write_json
from keelctl.errors import KeelError
from keelctl.eval.device import resolve_device
from keelctl.runs import heldout_data
from keelctl.sources import ModelSource, open_source

UNITS = ("sublayer", "block")
METHODS = ("cached", "naive")
COLUMNS = tuple(
    "run source scheme n_sublayers unit n_layers layer depth kind ppl dppl rel_dppl dloss "
    "removed block_influence rel_update".split()
)
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
    """The losses of one model source: the full model and every removal, on the same tokens,
    and the per-layer stream measures (NaN where not measured)."""

    run: str
    scheme: str  # a run's residual scheme, or a transformers model_type
    n_sublayers: int
    unit: str
    full_loss: float
    removals: list[Removal]
    losses: list[float]
    # range_size, tokens, seq_len, method, seconds, sublayer_passes, device, batch_size, data
    info: dict = field(default_factory=dict)
    source: str = "keelctl"  # or "transformers"
    block_influence: list[float] = field(default_factory=list)  # per layer in `unit`
    rel_update: list[float] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return self.n_sublayers if self.unit == "sublayer" else self.n_sublayers // 2

    @property
    def full_ppl(self) -> float:
        return _ppl(self.full_loss)

    def rows(self) -> list[dict]:
        """One row per removal, columns COLUMNS (the full model is `full_row`)."""
        return [
            self._row(r.layer, r.kind, loss, r.removed, r.stop - r.start)
            for r, loss in zip(self.removals, self.losses, strict=True)
        ]

    def full_row(self) -> dict:
        return self._row(None, "full", self.full_loss, "", 0)

    def _row(self, layer: int | None, kind: str, loss: float, removed: str, size: int) -> dict:
        ppl, full = _ppl(loss), self.full_ppl
        per = 1 if self.unit == "sublayer" else 2
        one = layer is not None and size == per  # the measures describe single layers
        values = (
            self.run,
            self.source,
            self.scheme,
            self.n_sublayers,
            self.unit,
            self.n_layers,
            layer,
            None if layer is None else (layer + size / per / 2) / self.n_layers,
            kind,
            ppl,
            ppl - full,
            (ppl - full) / full,
            loss - self.full_loss,
            removed,
            _measured(self.block_influence, layer) if one else None,
            _measured(self.rel_update, layer) if one else None,
        )
        return dict(zip(COLUMNS, values, strict=True))


def _measured(values: list[float], layer: int) -> float | None:
    """values[layer], None where it was not measured (JSON has no NaN)."""
    value = values[layer] if layer < len(values) else math.nan
    return None if math.isnan(value) else value


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
    n_sublayers: int, unit: str, layers: str | None = None, range_size: int = 1
) -> list[Removal]:
    """The removals to evaluate: each chosen layer (or the range of K layers it starts)."""
    check_options(unit=unit, range_size=range_size)
    per = 1 if unit == "sublayer" else 2
    n_layers = n_sublayers // per
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

    def kind(i: int) -> str:  # sub-layers alternate attention, FFN (keelctl and transformers)
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
    """One-line KeelErrors for bad options, before any model runs (output_dir is not created:
    a failed call writes nothing)."""
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
    if output_dir is not None:
        check_output_dir(Path(output_dir))


def check_output_dir(out: Path) -> None:
    """--output-dir can be created or written (its nearest existing parent is writable)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise KeelError(f"cannot create --output-dir {out}: {existing} is a file; pick another")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise KeelError(f"cannot create --output-dir {out}: {existing} is not writable")


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


def data_settings(sources: Sequence[ModelSource | str | Path], data: str | None) -> list:
    """Each source's DataConfig for evaluation. Default: a run's own (config.yaml), i.e. its
    validation split; a transformers model has none and needs --data. With --data, the first
    run's settings with the corpus replaced, for every source, so that sources sharing a
    tokenizer are scored on identical tokens."""
    sources = [s if hasattr(s, "data_config") else open_source(s) for s in sources]
    configs = [s.data_config() for s in sources]
    if data is not None:
        return [heldout_data(configs[0], data, _no_split(sources[0]))] * len(sources)
    return [heldout_data(c, None, _no_split(s)) for s, c in zip(sources, configs, strict=True)]


def _no_split(source: ModelSource) -> str:
    if source.kind == "transformers":
        return "a transformers model has no validation split"
    return f"{source.spec}/config.yaml is missing, so the run's validation corpus is unknown"


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
    dtype: str = "float32",
    device_map: str | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> list[RunAblation]:
    """Ablate every model source (run dir, transformers folder, hf:NAME[@REV]) on its tokens of
    the same corpus. Everything that needs no weights is checked for all sources before the
    first forward pass, so a bad layer or source fails fast. on_step(run, done, total) reports
    progress over one source's (removal, batch) evaluations."""
    check_options(
        unit=unit, range_size=range_size, tokens=tokens, batch_size=batch_size, method=method
    )
    dev = resolve_device(device)
    sources = [open_source(r, dtype=dtype, device_map=device_map) for r in runs]
    for source in sources:
        source.check_unit(unit)
    plans = [plan_removals(s.n_sublayers, unit, layers, range_size) for s in sources]
    loaders = [  # a run at the context it was trained at; a transformers model at its own
        eval_batches(eval_tokens(d, s.tokenizer), s.context, tokens, batch_size)
        for s, d in zip(sources, data_settings(sources, data), strict=True)
    ]
    results = []
    for source, removals, batches in zip(sources, plans, loaders, strict=True):
        name = source.spec
        step = (lambda done, total, name=name: on_step(name, done, total)) if on_step else None
        per = 1 if unit == "sublayer" else 2
        measures = StreamMeasures(source.n_sublayers // per, per)
        model = source.load(dev)  # one model in memory at a time
        t0 = time.perf_counter()
        if source.kind == "transformers":
            if unit == "sublayer":
                model.check_bypass()
            engine, model = hf_removal_losses, model
        else:
            engine, model = removal_losses, model.model
        full, losses, passes = engine(
            model, batches, removals, method=method, on_step=step, measures=measures
        )
        info = dict(
            range_size=range_size,
            tokens=batches.dataset.n_predicted,
            seq_len=batches.dataset.seq_len,
            method=method,
            seconds=time.perf_counter() - t0,
            sublayer_passes=passes,
            device=str(dev) if device_map is None or source.kind == "keelctl" else "auto",
            batch_size=batch_size,
            data=data or "the run's validation split",
        )
        bi, rel = measures.means()
        results.append(
            RunAblation(
                *(name, source.family, source.n_sublayers, unit, full, removals, losses, info),
                source=source.kind,
                block_influence=bi,
                rel_update=rel,
            )
        )
        del model
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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KeelError(f"cannot create --output-dir {out_dir} ({e.strerror}); pick another") from e
    csv_path, json_path, png_path = (out_dir / f"ablation.{e}" for e in ("csv", "json", "png"))
    rows = [row for res in results for row in (res.full_row(), *res.rows())]
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    runs = [
        summarize(res, threshold)
        | {
            "source": res.source,
            "full_loss": res.full_loss,
            "block_influence": [_measured(res.block_influence, i) for i in range(res.n_layers)],
            "rel_update": [_measured(res.rel_update, i) for i in range(res.n_layers)],
            **res.info,
        }
        for res in results
    ]
    atomic_write_json(json_path, {"columns": list(COLUMNS), "runs": runs, "rows": rows})
    curves = [
        AblationCurve(
            label=f"{Path(res.run).name} ({res.scheme}, L={res.n_sublayers} sub-layers)",
            layers=[r.layer for r in res.removals],
            dppl=[r["dppl"] for r in res.rows()],
            n_layers=res.n_layers,
            threshold=threshold * res.full_ppl,
            block_influence=res.block_influence,
            rel_update=res.rel_update,
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
