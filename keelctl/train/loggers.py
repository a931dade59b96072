"""Experiment trackers (trainer.loggers): Lightning's CSV, TensorBoard, W&B and MLflow loggers.

metrics.csv (CSVLogger) is always written: it is the run dir's record that compare-runs, plots
and --resume read. Every tracker gets the same metrics and the recipe as hyperparameters (the
LightningModule's hparams, which Lightning logs at the start of each fit). A resumed run keeps
logging into the same W&B / MLflow run: their ids are kept in RUN/trackers.json.

Where they write: TensorBoard RUN/tensorboard; W&B RUN/wandb (project $WANDB_PROJECT, default
keelctl; WANDB_MODE=offline for no network); MLflow $MLFLOW_TRACKING_URI, default the file
store file:RUN/mlruns (experiment $MLFLOW_EXPERIMENT_NAME, default keelctl).
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)

from keelctl.errors import KeelError
from keelctl.runs import Run

if TYPE_CHECKING:  # a figure is only ever handed in: matplotlib stays off the train path
    from matplotlib.figure import Figure

# logger name -> (module it needs, how to install it)
_NEEDS = {
    "tensorboard": ("tensorboard", "reinstall keelctl (tensorboard is one of its dependencies)"),
    "wandb": ("wandb", "pip install 'keelctl[wandb]'"),
    "mlflow": ("mlflow", "pip install 'keelctl[mlflow]'"),
}
PROJECT = "keelctl"  # W&B project and MLflow experiment unless the environment names one


def check_loggers_installed(names: Sequence[str]) -> None:
    """One line naming the extra to install when a chosen tracker's package is missing."""
    for name in names:
        module, install = _NEEDS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise KeelError(
                f"trainer.loggers has {name}, but the {module} package is not installed; "
                f"{install}, or remove {name} from trainer.loggers"
            )


def make_loggers(names: Sequence[str], run_dir: Path, run_name: str, resumed: bool) -> list[Logger]:
    """CSVLogger for RUN/metrics.csv first, then the trackers in `names` (rank zero only).
    Nothing is written until open_metrics() (resume.py) or the first log."""
    check_loggers_installed(names)
    ids = Run(run_dir).tracker_ids() if resumed else {}
    loggers: list[Logger] = [CSVLogger(save_dir=run_dir, name="", version="")]
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""))
    if "wandb" in names:
        loggers.append(
            WandbLogger(
                name=run_name,
                save_dir=run_dir,
                project=os.environ.get("WANDB_PROJECT", PROJECT),
                id=ids.get("wandb"),
                resume="allow",
            )
        )
    if "mlflow" in names:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 refuses its file store unless told it is wanted
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        loggers.append(
            _MLFlowLogger(
                experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT),
                run_name=run_name,
                tracking_uri=uri,
                run_id=ids.get("mlflow"),
            )
        )
    return loggers


class _MLFlowLogger(MLFlowLogger):
    """MLflow refuses to change a param within a run, and a resume may change a few recipe
    keys (max_steps, say): a resumed run logs only the params its MLflow run lacks (the
    run keeps its first values; config.yaml has the current ones)."""

    def log_hyperparams(self, params) -> None:
        params = _flatten_dict(_convert_params(params))
        if self._run_id is not None:
            logged = self.experiment.get_run(self._run_id).data.params
            params = {k: v for k, v in params.items() if k not in logged}
        super().log_hyperparams(params)


def start_trackers(loggers: Sequence[Logger], run_dir: Path) -> None:
    """Create the tracker runs now and record their ids, so a resume continues them."""
    ids = {}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            ids["wandb"] = logger.experiment.id
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.update_run(logger.run_id, status="RUNNING")  # a resumed run
            ids["mlflow"] = logger.run_id
    if ids:
        Run(run_dir).write_tracker_ids(ids)


def close_trackers(loggers: Sequence[Logger], status: str) -> None:
    """End the W&B and MLflow runs of this process (status: finished, preempted, diverged);
    Lightning's finalize leaves W&B open and marks an interrupted MLflow run FAILED."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            if status == "preempted":
                logger.experiment.mark_preempting()  # W&B shows it so, and expects a resume
            logger.experiment.finish(exit_code=0 if status == "finished" else 1)
        elif isinstance(logger, MLFlowLogger) and logger._initialized:
            mlflow_status = {"finished": "FINISHED", "preempted": "KILLED"}.get(status, "FAILED")
            logger.experiment.set_terminated(logger.run_id, mlflow_status)


def shows_images(loggers: Sequence[Logger]) -> bool:
    return any(isinstance(lg, TensorBoardLogger | WandbLogger | MLFlowLogger) for lg in loggers)


def log_tracker_metrics(loggers: Sequence[Logger], metrics: dict, step: int) -> None:
    """Metrics for the trackers only: metrics.csv keeps one row per logged step."""
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            logger.log_metrics(metrics, step=step)


def log_figure(loggers: Sequence[Logger], tag: str, figure: Figure, step: int) -> None:
    """The figure as an image in every tracker that shows images (not metrics.csv)."""
    png = None
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, global_step=step, close=False)
        elif isinstance(logger, WandbLogger):
            png = png or _png(figure)
            logger.log_image(tag, [_pil(png)], step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_figure(logger.run_id, figure, f"{tag}/step-{step:07d}.png")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _pil(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png))
