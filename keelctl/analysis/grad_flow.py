"""Gradient flow through depth: measure fresh models or transformers models (keelctl.sources)
at their released weights, read RUN/grads.csv, write the figures (the theory and the line
figure: keelctl/model/grad_theory.py, keelctl/figures.py).

Units: sub-layers (the paper's "layers": one attention or one FFN), index 0 = bottom,
block = index // 2; a transformers model is measured per block (decoder layer), and a mix is
drawn on a normalised depth axis. The two numbers per layer are defined in
keelctl/train/grad_recording.py; the measurement at init uses the same probe as the training
callback, treating K batches as the K micro-batches of one step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from keelctl.atomic import atomic_path, atomic_write_json
from keelctl.config import RecipeConfig, load_recipe
from keelctl.errors import KeelError
from keelctl.figures import GRAD_DPI, GradLine, grad_flow_figure
from keelctl.model import ModelConfig, Transformer, build_model
from keelctl.model.grad_theory import theory_gain, theory_label
from keelctl.model.loss import next_token_loss
from keelctl.runs import GRADS_CSV, Run
from keelctl.train.grad_recording import StreamGradProbe, param_grad_squares


@dataclass
class GradCurve:
    """Per-layer gradient norms of one run (or fresh model) at one step, bottom first: per
    sub-layer for keelctl models, per block for transformers models (config None)."""

    name: str
    config: ModelConfig | None
    step: int | None  # None: a transformers model's released weights
    param_grad_norm: list[float]
    stream_grad_norm: list[float]
    family: str | None = None  # a transformers model_type (config is None)

    @property
    def scheme(self) -> str:
        return self.config.residual if self.config else self.family

    @property
    def unit(self) -> str:
        return "sublayer" if self.config else "block"

    @property
    def n_sublayers(self) -> int:
        return self.config.n_sublayers if self.config else 2 * len(self.stream_grad_norm)

    @property
    def bottom_top_ratio(self) -> float:
        """stream_grad_norm at sub-layer 0 / at sub-layer L-1."""
        return self.stream_grad_norm[0] / self.stream_grad_norm[-1]

    @property
    def param_bottom_top_ratio(self) -> float:
        return self.param_grad_norm[0] / self.param_grad_norm[-1]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "scheme": self.scheme,
            "n_sublayers": self.n_sublayers,
            "unit": self.unit,
            "step": self.step,
            "param_grad_norm": self.param_grad_norm,
            "stream_grad_norm": self.stream_grad_norm,
            "bottom_top_ratio": self.bottom_top_ratio,
        }


@dataclass
class GradHistory:
    """Every complete step of a run's grads.csv: arrays of shape (steps, sub-layers)."""

    name: str
    config: ModelConfig
    path: Path
    steps: list[int]
    param_grad_norm: np.ndarray
    stream_grad_norm: np.ndarray

    def curve(self, step: int) -> GradCurve:
        k = self.steps.index(step)
        return GradCurve(
            self.name,
            self.config,
            step,
            self.param_grad_norm[k].tolist(),
            self.stream_grad_norm[k].tolist(),
        )

    def select(self, wanted: Sequence[int | str]) -> list[GradCurve]:
        """Curves for the wanted steps ("last" = the last recorded), each once, in order."""
        chosen: list[int] = []
        for want in wanted:
            step = self.steps[-1] if want == "last" else want
            if step not in self.steps:
                raise KeelError(
                    f"step {step} is not recorded in {self.path}; recorded steps: "
                    f"{_summarise(self.steps)} (use one of them or 'last')"
                )
            if step not in chosen:
                chosen.append(step)
        return [self.curve(s) for s in chosen]


# ---- measuring fresh models ---------------------------------------------------------------


def measure_grad_flow(
    model: Transformer,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    layers: Sequence[torch.nn.Module] | None = None,
) -> tuple[list[float], list[float]]:
    """(param_grad_norm, stream_grad_norm) per layer (default: the model's sub-layers) for one
    step whose micro-batches are `batches` (each loss divided by len(batches), as under
    gradient accumulation). Leaves the step's gradients in the parameters."""
    layers = model.sublayers if layers is None else layers
    probe = StreamGradProbe(layers)
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    probe.attach()
    try:
        for x, y in batches:
            probe.start_micro_batch()
            logits = model(x.to(device))
            loss = next_token_loss(logits, y.to(logits.device)) / len(batches)
            loss.backward()
    finally:
        probe.detach()
    param_sq = param_grad_squares(layers)
    return param_sq.sqrt().tolist(), probe.squared_norms(param_sq.device).sqrt().tolist()


def recipe_batches(recipe: RecipeConfig, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first n_batches training batches of the recipe's data (its seed, seq_len, batch)."""
    from keelctl.data import TrainWindows, prepare_data_section

    d = recipe.data
    data = prepare_data_section(d)
    windows = TrainWindows(data.train, d.seq_len, recipe.seed, n_batches * d.batch_size)
    return [
        default_collate([windows[b * d.batch_size + j] for j in range(d.batch_size)])
        for b in range(n_batches)
    ]


def at_init_curves(
    recipes: Sequence[str | Path], overrides: Sequence[str] = (), n_batches: int = 4
) -> list[GradCurve]:
    """Build each recipe's model fresh (seeded by its seed) and measure step 0 on its first
    n_batches batches, without training, in fp32 on CUDA when there is one (unless the recipe
    says trainer.accelerator: cpu). Named by recipe file stem."""
    if n_batches < 1:
        raise KeelError(f"--batches must be >= 1, got {n_batches}")
    torch.set_flush_denormal(True)
    curves = []
    for path in recipes:
        recipe = load_recipe(path, list(overrides))
        gpu = torch.cuda.is_available() and recipe.trainer.accelerator != "cpu"
        device = "cuda" if gpu else "cpu"
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.model).to(device).train()
        param, stream = measure_grad_flow(model, recipe_batches(recipe, n_batches))
        name = _unique(Path(path).stem, {c.name for c in curves})
        curves.append(GradCurve(name, recipe.model, 0, param, stream))
    return curves


def source_curves(
    sources: Sequence, data: str | None, n_batches: int = 4, device: str = "auto"
) -> list[GradCurve]:
    """Transformers models measured per block at their released weights (fp32 unless --dtype
    says otherwise): one step whose micro-batches are the first n_batches windows of --data
    (each the model's context, its own tokenizer). Named by the spec's last path part."""
    from keelctl.analysis.ablation import data_settings, eval_batches, eval_tokens
    from keelctl.eval.device import resolve_device

    if n_batches < 1:
        raise KeelError(f"--batches must be >= 1, got {n_batches}")
    if data is None:
        raise KeelError(
            f"{sources[0].spec}: a transformers model has no recorded gradients; pass --data "
            "SPEC to measure it on that corpus"
        )
    dev = resolve_device(device)
    loaders = [
        eval_batches(eval_tokens(d, s.tokenizer), s.context, n_batches * s.context, 1)
        for s, d in zip(sources, data_settings(sources, data), strict=True)
    ]
    curves: list[GradCurve] = []
    for source, batches in zip(sources, loaders, strict=True):
        model = source.load(dev)
        param, stream = measure_grad_flow(model, list(batches), model.layers)
        model.zero_grad(set_to_none=True)
        name = _unique(Path(source.spec).name, {c.name for c in curves})
        curves.append(GradCurve(name, None, None, param, stream, family=source.family))
        del model
    return curves


# ---- reading runs -------------------------------------------------------------------------


def read_grads(run_dir: str | Path) -> GradHistory:
    """A run's grads.csv (Run.grads) as a GradHistory."""
    run = Run(run_dir)
    steps, table = run.grads()  # (S, L, 2)
    param, stream = table[:, :, 0], table[:, :, 1]
    return GradHistory(run.path.name, run.recipe.model, run.path / GRADS_CSV, steps, param, stream)


def read_runs(run_dirs: Sequence[str | Path]) -> list[GradHistory]:
    """read_grads for each run; runs whose folder names clash are renamed NAME-2, NAME-3."""
    histories: list[GradHistory] = []
    for run in run_dirs:
        history = read_grads(run)
        history.name = _unique(history.name, {h.name for h in histories})
        histories.append(history)
    return histories


def parse_steps(text: str) -> list[int | str]:
    """'0,100,last' -> [0, 100, 'last']."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    wanted: list[int | str] = []
    for item in items:
        if item == "last":
            wanted.append(item)
        elif item.isdigit():
            wanted.append(int(item))
        else:
            raise KeelError(
                f"--steps expects comma-separated steps (integers >= 0) or 'last', "
                f"e.g. 0,100,last; got {item!r}"
            )
    if not wanted:
        raise KeelError("--steps is empty; give steps like 0,100,last")
    return wanted


def write_json(path: str | Path, curves: Sequence[GradCurve]) -> None:
    """{"runs": [GradCurve.to_json(), ...]}: lists indexed by sub-layer, bottom first."""
    try:
        atomic_write_json(path, {"runs": [c.to_json() for c in curves]})
    except OSError as e:
        raise KeelError(f"cannot write {path}: {e.strerror}; choose another --json") from e


def _summarise(steps: Sequence[int]) -> str:
    if len(steps) <= 8:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[:4])) + ", ..., " + ", ".join(map(str, steps[-3:]))


def _unique(name: str, taken: set[str]) -> str:
    k, candidate = 2, name
    while candidate in taken:
        candidate, k = f"{name}-{k}", k + 1
    return candidate


# ---- outputs ------------------------------------------------------------------------------


def write_outputs(
    curves: Sequence[GradCurve],
    output: str | Path,
    heatmap_of: GradHistory | None = None,
    json_path: str | Path | None = None,
) -> list[Path]:
    """The line plot at `output` (PNG), the step x sub-layer heatmap of `heatmap_of` beside it
    as OUTPUT-heatmap.png, and the JSON; returns the paths written."""
    from keelctl.analysis import plots

    output = Path(output)
    if output.suffix.lower() != ".png":
        raise KeelError(f"--output {output} must end in .png")
    steps = {c.name: [str(d.step) for d in curves if d.name == c.name] for c in curves}
    lines = [
        GradLine(
            f"{c.name} ({c.scheme}, {len(c.stream_grad_norm)} {c.unit}s), "
            + (
                "released weights"
                if c.step is None
                else f"step{'s' if len(steps[c.name]) > 1 else ''} " + ", ".join(steps[c.name])
            )
            + (" (light → dark)" if len(steps[c.name]) > 1 else ""),
            c.name,
            c.stream_grad_norm,
            c.param_grad_norm,
        )
        for c in curves
    ]
    theory = {theory_label(c.config): theory_gain(c.config) for c in curves if c.config}
    if len({(c.unit, len(c.stream_grad_norm)) for c in curves}) > 1:  # any mix: depth 0..1
        fig = plots.depth_grad_figure(lines, {c.name: c.unit for c in curves})
    else:
        fig = grad_flow_figure(lines, theory)
    written = [_save(fig, output, GRAD_DPI)]
    if heatmap_of is not None:
        h = heatmap_of
        fig = plots.grad_heatmap_figure(
            f"{h.name} ({h.config.residual}, {h.config.n_sublayers} sub-layers)",
            h.steps,
            h.stream_grad_norm,
            h.param_grad_norm,
        )
        written.append(_save(fig, output.with_name(f"{output.stem}-heatmap.png"), GRAD_DPI))
    if json_path is not None:
        write_json(json_path, curves)
        written.append(Path(json_path))
    return written


def _save(fig, path: Path, dpi: int) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    except OSError as e:
        raise KeelError(f"cannot write {path}: {e.strerror}; choose another --output") from e
    return path
