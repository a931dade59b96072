"""keelctl.runs.Run: it reads back every file of a run dir, names the run's state the way
`train --resume auto` acts on it, turns a missing or damaged file into one line, and its
writes (keelctl.atomic) leave the old file and no temporary file behind a failure."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from keelctl.atomic import WriteFailed, atomic_folder, atomic_write_json
from keelctl.config import RecipeConfig
from keelctl.data.tokenizers import ByteTokenizer
from keelctl.errors import KeelError
from keelctl.model import build_model
from keelctl.runs import (
    CHECKPOINTS,
    FINISHED,
    GRADS_COLUMNS,
    INTERRUPTED,
    LAST_CKPT,
    NEW,
    RESUMABLE,
    Run,
    heldout_data,
)
from keelctl.train.resume import check_run_dir, resolve_resume


@pytest.fixture
def recipe(tiny_model_config):
    model = tiny_model_config.model_dump()
    return RecipeConfig(name="run-test", model=model, data=dict(corpus="tiny.txt", seq_len=64))


def one_line_error(call) -> str:
    with pytest.raises(KeelError) as caught:
        call()
    text = str(caught.value)
    assert "\n" not in text
    return text


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---- reading what was written -----------------------------------------------------------------


def test_recipe_and_model_read_back_as_written(tmp_path, recipe):
    torch.manual_seed(0)
    model = build_model(recipe.model)
    run = Run(tmp_path / "run")
    run.write_recipe(recipe)
    run.save_model(model, ByteTokenizer(), steps=7)

    fresh = Run(tmp_path / "run")
    assert fresh.recipe == recipe and fresh.data_config() == recipe.data
    assert fresh.model_json["steps"] == 7
    cfg, tokenizer = fresh.model_meta
    assert cfg == recipe.model and tokenizer.to_dict() == ByteTokenizer().to_dict()
    loaded, _ = fresh.load_model()
    saved = loaded.state_dict()
    assert saved.keys() == model.state_dict().keys()
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, saved[name]), name


def test_summary_measures_and_provenance_read_back(tmp_path):
    run = Run(tmp_path)
    run.write_summary({"status": "finished", "final_val_loss": 2.5})
    run.save_measure("eval", {"ppl": 12.0})
    run.save_provenance({"torch_threads": 1})
    assert run.summary() == {"status": "finished", "final_val_loss": 2.5}
    assert run.has_measure("eval") and not run.has_measure("ablation")
    assert run.measure("eval") == {"ppl": 12.0}
    assert json.loads((tmp_path / "provenance.json").read_text()) == {"torch_threads": 1}


def test_metrics_columns_values_and_cut_rows(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "step,train_loss,val_loss\n0,3.0,\n1,2.5,2.75\n2,2.0,\n3,1.5"  # row 3 cut short
    )
    run = Run(tmp_path)
    assert run.metric_columns() == ["step", "train_loss", "val_loss"]
    assert run.metric("val_loss") == ([1], [2.75])
    assert run.metric("train_loss") == ([0, 1, 2], [3.0, 2.5, 2.0])
    assert [r["step"] for r in run.complete_rows("metrics.csv")] == ["0", "1", "2"]
    run.truncate_csv("metrics.csv", keep_steps_below=1)
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "step,train_loss,val_loss",
        "0,3.0,",
    ]


def test_grads_keep_the_last_rows_of_a_step_and_drop_incomplete_ones(tmp_path, recipe):
    run = Run(tmp_path)
    run.write_recipe(recipe)
    n = recipe.model.n_sublayers
    rows = [",".join(GRADS_COLUMNS)]
    rows += [f"0,{i},{i // 2},attn,{i},{10 * i}" for i in range(n)]
    rows += [f"5,{i},{i // 2},attn,1,1" for i in range(n)]
    rows += [f"5,{i},{i // 2},attn,{i + 0.5},{i + 0.25}" for i in range(n)]  # re-recorded
    rows += ["9,0,0,attn,1,1"]  # a step killed mid-write
    (tmp_path / "grads.csv").write_text("\n".join(rows) + "\n")
    steps, table = run.grads()
    assert steps == [0, 5] and table.shape == (2, n, 2)
    assert table[0, :, 0].tolist() == list(range(n))
    assert table[0, :, 1].tolist() == [10 * i for i in range(n)]
    assert table[1, :, 0].tolist() == [i + 0.5 for i in range(n)]


def test_step_checkpoints_are_listed_oldest_first(tmp_path):
    run = Run(tmp_path)
    assert run.step_checkpoints() == {}
    (tmp_path / CHECKPOINTS).mkdir()
    for name in ("step-0000020.ckpt", "step-0000005.ckpt", "last.ckpt", "step-x.ckpt"):
        (tmp_path / CHECKPOINTS / name).write_bytes(b"")
    assert run.step_checkpoints() == {
        5: tmp_path / CHECKPOINTS / "step-0000005.ckpt",
        20: tmp_path / CHECKPOINTS / "step-0000020.ckpt",
    }
    assert list(run.step_checkpoints()) == [5, 20]


def test_the_recipe_is_read_once(tmp_path, recipe):
    run = Run(tmp_path)
    run.write_recipe(recipe)
    first = run.recipe
    (tmp_path / "config.yaml").unlink()
    assert run.recipe is first  # cached: one parse per Run
    assert run.data_config() is None  # but no config.yaml now: no data section


# ---- state ------------------------------------------------------------------------------------


def test_state_follows_what_train_resume_auto_does(tmp_path, recipe):
    run_dir = tmp_path / "run"
    run = Run(run_dir)
    assert run.state == NEW and run.started == []
    assert resolve_resume(run_dir, recipe, "auto") is False

    run.write_recipe(recipe)  # killed before its first checkpoint
    assert run.state == INTERRUPTED and run.started == ["config.yaml"]
    assert resolve_resume(run_dir, recipe, "auto") is False  # same recipe: starts over
    with pytest.raises(KeelError, match="already holds a run"):
        check_run_dir(run_dir, resume=False)
    other = recipe.model_copy(update={"seed": recipe.seed + 1})
    assert "differs in seed" in one_line_error(lambda: resolve_resume(run_dir, other, "auto"))

    (run_dir / CHECKPOINTS).mkdir()
    (run_dir / CHECKPOINTS / LAST_CKPT).write_bytes(b"")
    assert run.state == RESUMABLE
    assert resolve_resume(run_dir, recipe, "auto") is True

    run.write_summary({"status": "preempted"})  # a stop signal: resumes
    assert run.state == RESUMABLE
    for status in ("finished", "stopped", "diverged"):
        run.write_summary({"status": status})
        assert run.state == FINISHED


def test_a_preempted_run_without_a_checkpoint_is_interrupted(tmp_path):
    Run(tmp_path).write_summary({"status": "preempted"})
    assert Run(tmp_path).state == INTERRUPTED


# ---- missing and damaged files ----------------------------------------------------------------


def test_missing_files_are_one_line(tmp_path):
    gone = Run(tmp_path / "nowhere")
    assert "does not exist" in one_line_error(lambda: gone.recipe)
    assert "does not exist" in one_line_error(lambda: gone.model_meta)
    empty = Run(tmp_path)
    assert "config.yaml is missing" in one_line_error(lambda: empty.recipe)
    assert "model.json is missing" in one_line_error(lambda: empty.model_meta)
    assert "summary.json is missing" in one_line_error(empty.summary)
    assert "metrics.csv is missing" in one_line_error(lambda: empty.metric("val_loss"))
    assert "eval.json is missing" in one_line_error(lambda: empty.measure("eval"))


def test_damaged_files_are_one_line(tmp_path, recipe):
    run = Run(tmp_path)
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    assert "not valid YAML" in one_line_error(lambda: run.recipe)
    (tmp_path / "model.json").write_text("{not json")
    assert "not valid JSON" in one_line_error(lambda: Run(tmp_path).model_meta)
    (tmp_path / "model.json").write_text('{"model": {"d_model": 32}}')
    assert "not a keelctl model description" in one_line_error(lambda: Run(tmp_path).model_meta)
    (tmp_path / "summary.json").write_text('{"status": ')
    assert "not valid JSON" in one_line_error(run.summary)
    run.write_recipe(recipe)
    (tmp_path / "grads.csv").write_text("step,norm\n0,1\n")
    assert "expected" in one_line_error(run.grads)
    (tmp_path / "trackers.json").write_text("{")
    assert "not valid JSON" in one_line_error(run.tracker_ids)


def test_held_out_data_is_the_runs_own_or_its_settings_with_the_given_corpus(recipe):
    own = recipe.data
    assert heldout_data(own, None, "unused") is own
    swapped = heldout_data(own, "other.txt", "unused")
    assert swapped.corpus == "other.txt"
    assert swapped.model_dump(exclude={"corpus"}) == own.model_dump(exclude={"corpus"})
    assert heldout_data(None, "other.txt", "unused").corpus == "other.txt"
    text = one_line_error(lambda: heldout_data(None, None, "no split here"))
    assert text == "no split here; pass --data SPEC"


# ---- atomic writes ----------------------------------------------------------------------------


def test_a_write_refused_part_way_keeps_the_old_file(tmp_path, monkeypatch):
    run = Run(tmp_path)
    run.write_summary({"status": "finished"})
    before = (tmp_path / "summary.json").read_bytes()

    def full_disk(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:5])  # part of it lands, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    text = one_line_error(lambda: run.write_summary({"status": "diverged"}))
    assert "No space left on device" in text
    monkeypatch.undo()
    assert (tmp_path / "summary.json").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_failed_model_export_keeps_the_old_weights(tmp_path, recipe, monkeypatch):
    import safetensors.torch

    run = Run(tmp_path)
    run.save_model(build_model(recipe.model), ByteTokenizer())
    before = (tmp_path / "model.safetensors").read_bytes()

    def refused(model, filename, *args, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(safetensors.torch, "save_model", refused)
    with pytest.raises(WriteFailed, match="Input/output error"):
        run.save_model(build_model(recipe.model), ByteTokenizer())
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_folder_write_that_fails_keeps_the_old_folder(tmp_path):
    out = tmp_path / "export"
    with atomic_folder(out) as tmp:
        (tmp / "a.json").write_text("old")
    assert (out / "a.json").read_text() == "old"
    with pytest.raises(ValueError), atomic_folder(out) as tmp:
        (tmp / "a.json").write_text("new, half")
        raise ValueError("the writer failed")
    assert (out / "a.json").read_text() == "old"
    with atomic_folder(out) as tmp:
        (tmp / "b.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.json"]
    assert leftovers(tmp_path) == []


def test_json_that_cannot_be_written_leaves_nothing(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"a": object()})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert leftovers(tmp_path) == []
