"""Every command answers a mistake with exit code 2, exactly one line on stderr that says what
to do, no traceback, and no output that looks complete. One row per mistake.

Each case is (command line, text the message must hold, outputs that must not appear); `{x}`
in either is filled from the fixtures below: {recipe} the tiny recipe, {sets} its overrides
(expanded to --set pairs), {run} a fresh run dir, {done} a finished run (a private copy),
{bare} an untrained exported model, {corpus} a small text folder, {file} a plain file, {out} a
fresh folder for outputs. Click's own usage errors (a missing argument, a non-integer for an
integer option) are left out: they also exit 2, but print Click's usage block.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from keelctl.cli import app

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny-keel.yaml"

# A message says what to do after a ";", or phrases it as a rule ("must be at least 1").
TO_DO = ("; ", " use ", " must ", " expects ")
TRAIN = ["train", "{recipe}", "{sets}", "--run-dir", "{run}"]
RESUME = ["train", "{done}/config.yaml", "--run-dir", "{done}", "--resume", "--max-steps", "50"]
RESUME_AUTO = [*RESUME[:5], "auto", *RESUME[5:]]

# fmt: off
CASES = {
    # train: recipes and overrides
    "recipe missing": (["train", "{out}/nope.yaml"], "nope.yaml not found; see recipes/", []),
    "recipe not YAML": (["train", "{out}/bad.yaml"], "not valid YAML at line 3; fix", []),
    "recipe a list": (["train", "{out}/list.yaml"], "must be a mapping with sections", []),
    "unknown key": ([*TRAIN, "--set", "model.n_layers=4"], "allowed here: vocab_size", ["{run}"]),
    "wrong type": ([*TRAIN, "--set", "trainer.max_steps=many"], "valid integer", ["{run}"]),
    "lr zero": ([*TRAIN, "--set", "optim.lr=0"], "'optim.lr': Input should be greater", ["{run}"]),
    "lr negative": ([*TRAIN, "--set", "optim.lr=-1e-3"], "'optim.lr': Input should be", ["{run}"]),
    "no blocks": ([*TRAIN, "--set", "model.n_blocks=0"], "'model.n_blocks': Input should", []),
    "alpha zero": ([*TRAIN, "--set", "model.alpha=0"], "'model.alpha': Input should be", []),
    "precision 16": ([*TRAIN, "--set", "trainer.precision=16"], "'32' or 'bf16-mixed'", []),
    "set without =": ([*TRAIN, "--set", "optim.lr"], "--set expects key.path=value", ["{run}"]),
    "set into a value": ([*TRAIN, "--set", "seed.x=1"], "'seed' is a value, not a section", []),
    "seq_len too long": ([*TRAIN, "--set", "data.seq_len=999"], "exceeds model.max_seq_len", []),
    "bad rollback": (
        [*TRAIN, "--set", "trainer.spike_rollback.lr_scale=2"],
        "'trainer.spike_rollback.lr_scale': Input should be less than 1",
        ["{run}"],
    ),
    # train: devices and strategies
    "zero devices": ([*TRAIN, "--set", "trainer.devices=0"], "count >= 1 or 'auto'", ["{run}"]),
    "unknown strategy": (
        [*TRAIN, "--set", "trainer.strategy=horovod"],
        "'trainer.strategy': Input should be 'auto', 'ddp' or 'fsdp'",
        ["{run}"],
    ),
    "fsdp on a gpu that is not there": (
        [*TRAIN, "--set", "trainer.strategy=fsdp", "--set", "trainer.accelerator=gpu"],
        "Lightning cannot run trainer.accelerator gpu",
        ["{run}"],
    ),
    "gpu without one": (
        [*TRAIN, "--set", "trainer.accelerator=gpu"],
        "Lightning cannot run trainer.accelerator gpu",
        ["{run}"],
    ),
    # train: data and run dirs
    "corpus missing": ([*TRAIN, "--set", "data.corpus={out}/none"], "does not exist", ["{run}"]),
    "corpus empty": ([*TRAIN, "--set", "data.corpus={out}/empty"], "has no text", ["{run}"]),
    "run dir under a file": (
        ["train", "{recipe}", "{sets}", "--run-dir", "{file}/run"],
        "is not writable",
        [],
    ),
    "run dir taken": (
        ["train", "{done}/config.yaml", "--run-dir", "{done}"],
        "already holds a run",
        [],
    ),
    # train --resume: checkpoints
    "resume without ckpt": ([*TRAIN, "--resume"], "no checkpoint at", ["{run}"]),
    "ckpt truncated": (RESUME, "it may be truncated or not a keelctl checkpoint", []),
    "ckpt of another shape": (RESUME, "holds a different model (model.tok_emb.weight is", []),
    "ckpt not keelctl's": (RESUME, "is not a keelctl training checkpoint", []),
    "ckpt with code": (RESUME, "keelctl does not load it", []),
    "resume, other recipe": ([*RESUME, "--set", "optim.lr=1e-3"], "differs from the check", []),
    "resume past the end": (RESUME[:-2], "already reached step 40", []),
    "auto, ckpt truncated": (RESUME_AUTO, "cannot read checkpoint ", []),
    "auto, other recipe": ([*RESUME_AUTO, "--set", "optim.lr=1e-3"], "differs from the check", []),
    "auto without --resume": ([*TRAIN, "auto"], "right after --resume", ["{run}"]),
    # train: checkpoints and trackers
    "ckpt minutes zero": ([*TRAIN, "--set", "trainer.checkpoint_every_minutes=0"],
                          "'trainer.checkpoint_every_minutes': Input should be greater than 0",
                          ["{run}"]),
    "keep ckpts negative": ([*TRAIN, "--set", "trainer.keep_checkpoints=-1"],
                            "'trainer.keep_checkpoints': Input should be greater", ["{run}"]),
    "unknown logger": ([*TRAIN, "--set", "trainer.loggers=csv,neptune"],
                       "'csv', 'tensorboard', 'wandb' or 'mlflow' (got 'neptune')", ["{run}"]),
    # eval
    "eval no run dir": (["eval", "{out}/none", "--output", "{out}/r.json"], "does not exist",
                        ["{out}/r.json"]),
    "eval not a run": (["eval", "{out}", "--output", "{out}/r.json"], "model.json is missing",
                       ["{out}/r.json"]),
    "eval cuda missing": (["eval", "{bare}", "--device", "cuda"], "CUDA", []),
    "eval weights cut": (["eval", "{done}", "--output", "{out}/r.json"], "cannot load",
                         ["{out}/r.json"]),
    "eval output in a file": (["eval", "{bare}", "--output", "{file}/r.json"], "--output", []),
    "eval model.json edited": (["eval", "{done}"], "model: bad value for 'd_model'", []),
    # ablate-layers
    "ablate bad unit": (
        ["ablate-layers", "{bare}", "--unit", "head", "--output-dir", "{out}/abl"],
        "unknown --unit 'head'",
        ["{out}/abl/ablation.json"],
    ),
    "ablate bad layers": (
        ["ablate-layers", "{bare}", "--layers", "x-y", "--output-dir", "{out}/abl"],
        "--layers",
        ["{out}/abl/ablation.json"],
    ),
    "ablate no run": (
        ["ablate-layers", "{out}/none", "--output-dir", "{out}/abl"],
        "does not exist",
        ["{out}/abl/ablation.json"],
    ),
    # plot-grads
    "grads none recorded": (["plot-grads", "{bare}", "-o", "{out}/g.png"], "grads.csv",
                            ["{out}/g.png"]),
    "grads bad steps": (
        ["plot-grads", "{done}", "--steps", "soon", "-o", "{out}/g.png"],
        "--steps",
        ["{out}/g.png"],
    ),
    "grads recipe missing": (
        ["plot-grads", "--at-init", "{out}/nope.yaml", "-o", "{out}/g.png"],
        "nope.yaml not found",
        ["{out}/g.png"],
    ),
    # bench
    "bench bad scheme": (["bench", "--schemes", "resnet", "--output", "{out}/b.json"],
                         "unknown scheme(s)", ["{out}/b.json"]),
    "bench odd depth": (["bench", "--depths", "3", "--output", "{out}/b.json"],
                        "must be even", ["{out}/b.json"]),
    "bench output in a file": (
        ["bench", "--depths", "2", "--schemes", "keel", "--d-model", "32", "--seq-len", "8",
         "--steps", "1", "--warmup", "0", "--no-lightning", "--output", "{file}/b.json"],
        "cannot write",
        [],
    ),
    "bench cuda missing": (["bench", "--device", "cuda", "--output", "{out}/b.json"],
                           "use --device cpu", ["{out}/b.json"]),
    # repro
    "repro bad protocol": (["repro", "max-loss", "--out", "{out}/rep"], "max-lr",
                           ["{out}/rep/report.md"]),
    "repro bad scale": (["repro", "max-lr", "--scale", "huge", "--out", "{out}/rep"], "micro",
                        ["{out}/rep/report.md"]),
    "repro zero seeds": (["repro", "max-lr", "--seeds", "0", "--out", "{out}/rep"],
                         "--seeds must be at least 1", ["{out}/rep/report.md"]),
    "repro out in a file": (["repro", "max-lr", "--scale", "micro", "--out", "{file}/rep"],
                            "cannot write", []),
    # compare-runs
    "compare unfinished": (["compare-runs", "{out}"], "summary.json is missing", []),
    "compare summary edited": (["compare-runs", "{done}"], "summary.json is not valid JSON", []),
    "compare plot in a file": (
        ["compare-runs", "{done}", "--plot", "{file}/p.png"],
        "cannot write",
        [],
    ),
}
# fmt: on


def _spoil(case: str, done: Path, out: Path) -> None:
    """Prepare what a case reads: a broken recipe, or a damaged copy of a finished run."""
    (out / "bad.yaml").write_text("model:\n  d_model: [64\n")
    (out / "list.yaml").write_text("- model\n- data\n")
    (out / "empty").mkdir()
    ckpt = done / "checkpoints" / "last.ckpt"
    if case in ("ckpt truncated", "auto, ckpt truncated"):
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    elif case in ("ckpt of another shape", "ckpt not keelctl's", "ckpt with code"):
        state = torch.load(ckpt, weights_only=True)
        if case == "ckpt of another shape":
            state["state_dict"]["model.tok_emb.weight"] = torch.zeros(300, 32)
        elif case == "ckpt not keelctl's":
            state = {"weights": torch.zeros(3)}
        else:
            state["payload"] = print
        torch.save(state, ckpt)
    elif case == "eval model.json edited":
        meta = json.loads((done / "model.json").read_text())
        meta["model"]["d_model"] = "wide"
        (done / "model.json").write_text(json.dumps(meta))
    elif case == "compare summary edited":
        (done / "summary.json").write_text("{'status': 'finished'}")
    elif case == "eval weights cut":
        weights = done / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])


@pytest.fixture
def filled(tmp_path, trained_run_dir, model_run_dir, tiny_corpus, tiny_train_sets):
    def fill(case: str, items: list[str]) -> list[str]:
        out = tmp_path / "out"
        done = tmp_path / "done"
        if not out.exists():
            out.mkdir()
            shutil.copytree(trained_run_dir, done)
            (tmp_path / "a-file").write_text("")
            _spoil(case, done, out)
        names = dict(
            recipe=TINY,
            run=tmp_path / "run",
            done=done,
            bare=model_run_dir,
            corpus=tiny_corpus,
            file=tmp_path / "a-file",
            out=out,
        )
        sets = [a for s in tiny_train_sets(tmp_path / "cache", 20) for a in ("--set", s)]
        filled_items = []
        for item in items:
            filled_items += sets if item == "{sets}" else [item.format(**names)]
        return filled_items

    return fill


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_and_exit_code_2(case, filled):
    args, expected, absent = CASES[case]
    args = filled(case, args)
    done = Path(filled(case, ["{done}"])[0])
    before = _contents(done)
    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr, result.exception)
    assert "Traceback" not in result.output + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert any(w in lines[0] for w in TO_DO), f"says what is wrong, not what to do: {lines[0]}"
    for path in filled(case, absent):
        assert not Path(path).exists(), f"{path} was left behind"
    assert _contents(done) == before, "a failed command changed a finished run"


def _contents(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
