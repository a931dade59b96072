"""Stopping cleanly when the cluster says so: SIGTERM (preemption, scancel, a spot instance
going away) and SIGUSR1 (SLURM's warning before the time limit, `#SBATCH --signal=USR1@120`).

One mechanism, keelctl's own (docs/scale.md): the handler only notes the signal; the
checkpoint callback (checkpoints.py) sees it at the end of the current optimizer step, all ranks
agree on that step, last.ckpt is written, and RunPreempted ends the fit; train() then writes
summary.json (status preempted). Under SLURM, SIGUSR1 also requeues the job (`scontrol
requeue`); SIGTERM does not, so that `scancel` still cancels (SLURM requeues preempted jobs
itself). Lightning's own handlers (its SLURM auto-requeue saves hpc_ckpt_*.ckpt from inside the
signal handler, in the middle of a step) are switched off.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.fabric.plugins.environments import SLURMEnvironment

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
REQUEUE_SIGNAL = signal.SIGUSR1


class RunPreempted(Exception):  # noqa: N818 (an event train() handles, not an error)
    """Raised by the checkpoint callback once last.ckpt holds the step the run stopped at."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}")
        self.signum, self.step = signum, step


class StopSignals:
    """Notes SIGTERM / SIGUSR1 instead of dying. A second signal (during the save, say) is
    noted again and changes nothing: the save is atomic and is not interrupted."""

    def __init__(self, then: str = "stopping after the current optimizer step, with a checkpoint"):
        self.received = 0  # the first signal's number, 0 = none
        self.then = then

    def _note(self, signum, frame) -> None:
        if not self.received:
            self.received = signum
            log.warning("received %s: %s", signal.Signals(signum).name, self.then)

    def install(self) -> None:
        """Take over the stop signals (called once Lightning has installed its own handlers,
        which this replaces; Lightning restores the earlier handlers when the fit ends).
        Python lets only the main thread set handlers: a fit in another thread keeps them."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._note)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Stop signals are noted, not obeyed, inside: a finished run's export takes seconds,
    and a run killed in it could not be resumed (its checkpoint is at max_steps)."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    StopSignals(then="finishing the export of the trained model first").install()
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def cluster_plugins() -> list:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue (keelctl's
    handler requeues, after a whole step and a checkpoint)."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def requeue_slurm_job(signum: int) -> None:
    """`scontrol requeue` this job when SLURM warned of its time limit (global rank zero)."""
    job = os.environ.get("SLURM_JOB_ID")
    if signum != REQUEUE_SIGNAL or not job:
        return
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as e:
        log.warning("could not requeue SLURM job %s: %s", job, e)
        return
    if done.returncode:
        log.warning("scontrol requeue %s failed: %s", job, done.stderr.strip())
    else:
        log.warning("requeued SLURM job %s", job)
