"""`keelctl export --format hf`: the folder loads with transformers and computes keelctl's
logits for every scheme; its generate and tokenizer agree with keelctl's; bad input."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from keelctl.cli import app
from keelctl.export import export_hf
from keelctl.model import RESIDUALS
from keelctl.runs import MODEL_WEIGHTS, Run

transformers = pytest.importorskip("transformers")

VARIANTS = {
    **{name: {"residual": name} for name in RESIDUALS},
    "keel_v1": {"residual": "keel", "keel_first_block": "v1"},
    "keel_v2_final_norm": {"residual": "keel", "keel_first_block": "v2", "final_norm": True},
    "keel_v1_final_norm": {"residual": "keel", "keel_first_block": "v1", "final_norm": True},
    "pre_ln_no_final_norm": {"residual": "pre_ln", "final_norm": False},
    "keel_tied_gelu_mha": {"tie_embeddings": True, "ffn": "gelu", "n_kv_heads": None},
    "keel_qkv_norm": {"residual": "keel", "qkv_norm": True},
    "peri_ln_embedding_norm": {"residual": "peri_ln", "embedding_norm": True},
    "keel_naive": {"residual": "keel", "keel_inner_norm": False},  # LN(alpha*x + F(x))
    "keel_naive_alpha_none": {"keel_inner_norm": False, "alpha": 2.0, "keel_first_block": "none"},
}


def load_hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_hf_logits_equal_keelctl(make_run, tmp_path, variant):
    run = make_run(variant, **VARIANTS[variant])
    folder = export_hf(run, tmp_path / f"hf-{variant}", context=48)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_keel.KeelForCausalLM"
    model, _ = Run(run).load_model()
    hf = load_hf(folder)
    assert hf.dtype == torch.float32
    ids = torch.randint(0, 257, (2, 24))
    with torch.no_grad():
        expected, got = model(ids), hf(ids).logits
    assert expected.abs().max() > 1  # weights were really loaded, logits are not flat
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_left_padded_hf_batch_equals_each_row_alone(make_run, tmp_path):
    folder = export_hf(make_run("keel"), tmp_path / "hf", context=48)
    hf = load_hf(folder)
    ids = torch.randint(0, 256, (1, 10))
    padded = torch.cat([torch.full((1, 4), 256), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 10)], dim=1).long()
    with torch.no_grad():
        alone, batched = hf(ids).logits, hf(padded, attention_mask=mask).logits[:, 4:]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_hf_generate_greedy_equals_keelctl_generate(trained_run_dir, tmp_path):
    folder = tmp_path / "hf"
    result = CliRunner().invoke(app, ["export", str(trained_run_dir), "--output", str(folder)])
    assert result.exit_code == 0, result.output
    tok = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    prompt = "def "
    ids = torch.tensor([[tok.eos_token_id, *tok(prompt)["input_ids"]]])
    out = load_hf(folder).generate(ids, max_new_tokens=24, do_sample=False)
    hf_text = prompt + tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    result = CliRunner().invoke(
        app,
        [
            "generate",
            str(trained_run_dir),
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-new-tokens",
            "24",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == hf_text + "\n"
    assert len(hf_text) > len(prompt) + 10


def test_tokenizers_load_offline_and_encode_like_keelctl(make_run, tmp_path):
    from keelctl.data.tokenizers import BPETokenizer, ByteTokenizer

    text = "def naïve(x):\n\treturn x  # 日本 <|endoftext|>\r\n"
    bpe = BPETokenizer.train(["def f(x):\n    return x * 2\n" * 50, "naïve café 日本"], 300)
    for name, keel_tok in (("byte", ByteTokenizer()), ("bpe", bpe)):
        run = make_run(name, tokenizer=keel_tok, vocab_size=keel_tok.vocab_size)
        tok = transformers.AutoTokenizer.from_pretrained(
            export_hf(run, tmp_path / f"hf-{name}", context=48), trust_remote_code=True
        )
        ids = keel_tok.encode(text)
        assert tok(text)["input_ids"] == ids
        assert tok.decode(ids, skip_special_tokens=True) == keel_tok.decode(ids)
        assert tok.eos_token_id == tok.bos_token_id == keel_tok.eot_id
    assert ids != list(text.encode())  # the BPE really merged something


def invoke_export(run, out, *extra):
    return CliRunner().invoke(app, ["export", str(run), "--output", str(out), *extra])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    return result.stderr


def test_non_empty_output_needs_force_and_force_replaces_it(make_run, tmp_path):
    run, out = make_run("keel"), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "--force" in one_error_line(invoke_export(run, out))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert invoke_export(run, out, "--force").exit_code == 0
    assert not (out / "notes.txt").exists() and (out / MODEL_WEIGHTS).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keel", "out"]  # no temp folders left


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_weights_are_refused_and_nothing_is_written(make_run, tmp_path, damage):
    run, out = make_run("keel"), tmp_path / "out"
    weights = run / MODEL_WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * 64)
    assert "cannot load" in one_error_line(invoke_export(run, out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keel"]


def test_other_bad_input(make_run, tmp_path):
    run = make_run("keel")
    assert "model.json is missing" in one_error_line(invoke_export(tmp_path, tmp_path / "o"))
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_error_line(invoke_export(run, tmp_path / "file"))
    assert "--format" in one_error_line(invoke_export(run, tmp_path / "o", "--format", "gguf"))


def test_an_option_the_hf_code_lacks_is_refused(make_run, tmp_path, monkeypatch):
    import keelctl.export.hf as hf

    run = make_run("qkv", qkv_norm=True)
    monkeypatch.setattr(hf, "EXPORTED_OPTIONS", hf.EXPORTED_OPTIONS - {"qkv_norm"})
    assert "qkv_norm=True is not supported" in one_error_line(invoke_export(run, tmp_path / "o"))
    monkeypatch.setattr(hf, "EXPORTED_OPTIONS", hf.EXPORTED_OPTIONS | {"qkv_norm"})
    monkeypatch.setattr(hf, "expected_parameters", lambda cfg: {"tok_emb.weight"})
    assert "does not know the parameters" in one_error_line(invoke_export(run, tmp_path / "o"))
    assert not (tmp_path / "o").exists()
