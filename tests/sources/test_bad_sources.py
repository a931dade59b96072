"""Bad model sources: one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import sys

import pytest
import torch
from tiny_hf import transformers
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.errors import KeelError
from keelctl.sources import open_source
from keelctl.sources.layers import find_decoder_layers


def save(config, tmp_path, name: str, model_class=None) -> str:
    """A folder holding `config` (and random weights of model_class when given)."""
    folder = tmp_path / name
    if model_class is None:
        config.save_pretrained(folder)
    else:
        model_class(config).save_pretrained(folder)
    return str(folder)


def fails_cleanly(argv, words: str, out) -> None:
    result = CliRunner().invoke(app, [*map(str, argv), "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert words in result.stderr
    assert not out.exists()  # nothing written, not even the folder


def test_bad_sources_are_one_line_exit_2(tmp_path, hf_folder, tiny_corpus):
    neither = tmp_path / "neither"
    neither.mkdir()
    bert = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    t5 = transformers.T5Config(vocab_size=50, d_model=16, d_ff=32, num_layers=2, num_heads=2)
    opt = transformers.OPTConfig(
        vocab_size=300,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        do_layer_norm_before=False,
        word_embed_proj_dim=16,
        max_position_embeddings=64,
    )
    opt_folder = save(opt, tmp_path, "opt", transformers.OPTForCausalLM)
    transformers.AutoTokenizer.from_pretrained(hf_folder("llama")).save_pretrained(opt_folder)
    out, data = tmp_path / "out", ["--data", tiny_corpus]
    cases = [
        ([neither], "model.json is missing and so is config.json"),
        ([tmp_path / "missing"], "does not exist"),
        ([save(bert, tmp_path, "bert", transformers.BertForMaskedLM)], "is not a causal LM"),
        ([save(t5, tmp_path, "t5")], "is an encoder-decoder (seq2seq) model"),
        ([opt_folder, "--unit", "sublayer", *data], "no separate attention and MLP"),
        ([hf_folder("llama")], "a transformers model has no validation split; pass --data"),
        ([hf_folder("llama"), "--dtype", "fp8", *data], "unknown --dtype 'fp8'"),
        (["hf:"], "names no model"),
    ]
    for args, words in cases:
        fails_cleanly(["ablate-layers", *args], words, out)
    # a Post-LN OPT has no bypassable branches, but its blocks can be removed
    result = CliRunner().invoke(
        app,
        [
            "ablate-layers",
            opt_folder,
            "--unit",
            "block",
            *data,
            "--tokens",
            64,
            "--device",
            "cpu",
            "--output-dir",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output


def test_post_ln_layers_fail_the_bypass_check(hf_folder):
    """Zeroing both branches of x' = norm(x + F(x)) leaves norm(x), not x."""
    model = open_source(hf_folder("llama")).load(torch.device("cpu"))
    model.check_bypass()  # Pre-LN: passes
    for block in model.blocks:
        block.forward = lambda x, *a, block=block, **k: block.input_layernorm(x + block.mlp(x))
    with pytest.raises(KeelError, match="cannot be bypassed one at a time"):
        model.check_bypass()


def test_no_list_of_layers_means_no_decoder_layers():
    with pytest.raises(KeelError, match="cannot find the decoder layers of m"):
        find_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), "m")


def test_missing_transformers_is_one_line(monkeypatch, hf_folder):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(KeelError, match=r"pip install 'keelctl\[hf\]'"):
        open_source(hf_folder("llama"))


def test_hub_name_offline_without_a_cache(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv = ["eval", "hf:nobody/tiny-model@main", "--data", "x", "--output", tmp_path / "e.json"]
    result = CliRunner().invoke(app, [*map(str, argv)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: cannot load hf:nobody/tiny-model@main (")
    assert "offline" in result.stderr.lower() and not (tmp_path / "e.json").exists()
