"""`keelctl generate` on a trained tiny run: streaming output, truncation note, bad input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.generate import generate
from keelctl.runs import Run


def invoke(*args):
    return CliRunner().invoke(app, ["generate", *map(str, args)])


def test_greedy_output_is_the_prompt_then_the_greedy_continuation(trained_run_dir):
    result = invoke(
        trained_run_dir,
        "--prompt",
        "def ",
        "--temperature",
        "0",
        "--max-new-tokens",
        "25",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    model, tok = Run(trained_run_dir).load_model()
    new = generate(
        model, [[tok.eot_id, *tok.encode("def ")]], max_new_tokens=25, context=32, eot_id=tok.eot_id
    )[0]
    assert result.stdout == "def " + tok.decode(new) + "\n"
    assert result.stderr == ""


def test_long_prompt_is_cut_with_one_note_and_samples_repeat_with_a_seed(trained_run_dir):
    args = [
        trained_run_dir,
        "--prompt",
        "x = 1\n" * 20,
        "--num-samples",
        "3",
        "--seed",
        "7",
        "--max-new-tokens",
        "10",
        "--device",
        "cpu",
    ]
    first, again = invoke(*args), invoke(*args)
    assert first.exit_code == 0, first.output
    notes = first.stderr.strip().splitlines()
    assert len(notes) == 1 and "only its last 32" in notes[0]  # data.seq_len of the run
    assert first.stdout.count("--- sample ") == 3
    assert first.stdout == again.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "0"], "--top-k"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--num-samples", "0"], "--num-samples"),
        (["--prompt", ""], "--prompt is empty"),
        (["--prompt", "a", "--prompt-file", "{empty}"], "not both"),
        (["--prompt-file", "{empty}"], "is empty"),
        (["--prompt-file", "{missing}"], "cannot read"),
    ],
)
def test_bad_input_is_one_line_exit_2(trained_run_dir, tmp_path, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = [a.format(empty=empty, missing=tmp_path / "nope.txt") for a in args]
    result = invoke(trained_run_dir, *args, "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr and result.stdout == ""


def test_not_a_run_dir(tmp_path):
    result = invoke(tmp_path, "--device", "cpu")
    assert result.exit_code == 2 and "model.json is missing" in result.stderr
    assert result.stderr.count("\n") == 1
