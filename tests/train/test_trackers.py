"""Every tracker gets the recipe and the same metrics, and the live gradient profile; read back
offline: TensorBoard event files, MLflow's file store, W&B's offline run file."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import struct
import sys

import lightning as L
import pytest

from keelctl.errors import KeelError
from keelctl.train import train

METRICS = ("train_loss", "val_loss", "val_ppl", "lr", "tokens_per_s", "grad_norm")


def csv_metrics(run) -> dict:
    """{name: {step: value}} of metrics.csv."""
    out = {name: {} for name in METRICS}
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for name in METRICS:
                if row.get(name):
                    out[name][int(row["step"])] = float(row[name])
    return out


def profile_ratios(run) -> dict:
    """{step: (bottom/top, min/top)} of the stream gradient in grads.csv."""
    stream: dict = {}
    with open(run / "grads.csv", newline="") as f:
        for row in csv.DictReader(f):
            stream.setdefault(int(row["step"]), []).append(float(row["stream_grad_norm"]))
    return {s: (g[0] / g[-1], min(g) / g[-1]) for s, g in stream.items()}


def wandb_records(path):
    """Records of a W&B offline run file: W&B's LevelDB-style log of protobuf records
    (7-byte file header, 32 KiB blocks, 7-byte record headers: crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if (kind, length) == (0, 0):
            break
        parts, pos = parts + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or its last part
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-6 * abs(a[k]) for k in a)


class StopAt(L.Callback):
    """SIGTERM to this process while step `step` trains: the run stops after it (preempted)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_csv_tensorboard_wandb_mlflow_get_the_same_run(tiny_recipe, tmp_path, monkeypatch):
    """Preempted after step 3 and resumed (whose last steps fill the 20-step tokens/s window):
    each tracker holds one run with every step."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    recipe = tiny_recipe("trainer.loggers=csv,tensorboard,wandb,mlflow", max_steps=26)
    run = tmp_path / "run"
    assert train(recipe, run, progress_bar=False, callbacks=[StopAt(3)])["status"] == "preempted"
    first_ids = json.loads((run / "trackers.json").read_text())
    from mlflow.tracking import MlflowClient

    client = MlflowClient((tmp_path / "mlruns").as_uri())
    assert client.get_run(first_ids["mlflow"]).info.status == "KILLED"
    train(recipe, run, resume="auto", progress_bar=False)
    expected, ratios = csv_metrics(run), profile_ratios(run)
    assert all(expected[name] for name in METRICS), {k: len(v) for k, v in expected.items()}
    assert sorted(ratios) == [0, 10, 20, 25]
    ids = json.loads((run / "trackers.json").read_text())
    assert ids == first_ids

    # TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    for name in METRICS:
        assert close(expected[name], {e.step: e.value for e in events.Scalars(name)}), name
    bottom = {e.step: e.value for e in events.Scalars("grad_flow/bottom_top")}
    assert close({s: r[0] for s, r in ratios.items()}, bottom)
    assert [e.step for e in events.Images("grad_flow")] == [0, 10, 20, 25]
    assert "residual: keel" in (run / "tensorboard" / "hparams.yaml").read_text()

    # MLflow
    mlflow_run = client.get_run(ids["mlflow"])
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["recipe/model/residual"] == "keel"
    for name in METRICS:
        history = {m.step: m.value for m in client.get_metric_history(ids["mlflow"], name)}
        assert close(expected[name], history), name
    min_top = {
        m.step: m.value for m in client.get_metric_history(ids["mlflow"], "grad_flow/min_top")
    }
    assert close({s: r[1] for s, r in ratios.items()}, min_top)
    figures = [a.path for a in client.list_artifacts(ids["mlflow"], "grad_flow")]
    assert figures == [f"grad_flow/step-{s:07d}.png" for s in (0, 10, 20, 25)]

    # W&B: one offline file per part of the run, the same run id
    parts = sorted((run / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb"))
    assert len(parts) == 2
    logged: dict = {name: {} for name in METRICS}
    images, config = [], {}
    for record in (r for part in parts for r in wandb_records(part)):
        if record.HasField("history"):
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            for name in METRICS:
                if name in row:
                    logged[name][row["trainer/global_step"]] = row[name]
            if row.get("grad_flow/_type") == "images/separated":  # a figure, kept under media/
                images.append(row["trainer/global_step"])
        elif record.HasField("config"):
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    for name in METRICS:
        assert close(expected[name], logged[name]), name
    assert images == [0, 10, 20, 25]
    assert config["recipe"]["model"]["residual"] == "keel"


@pytest.mark.parametrize("name,extra", [("wandb", "keelctl[wandb]"), ("mlflow", "keelctl[mlflow]")])
def test_a_tracker_that_is_not_installed_names_its_extra(
    tiny_recipe, tmp_path, monkeypatch, name, extra
):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    recipe = tiny_recipe(f"trainer.loggers=csv,{name}", max_steps=5)
    message = f"the {name} package is not installed; pip install '{extra}'"
    with pytest.raises(KeelError, match=re.escape(message)):
        train(recipe, tmp_path / "run", progress_bar=False)
    assert not (tmp_path / "run").exists()
