"""`keelctl export --format hf`: a run dir as a Hugging Face transformers model folder.

    OUT/config.json             KeelConfig, with auto_map to the two code files below
    OUT/configuration_keel.py   copied from keelctl/export/remote_code/
    OUT/modeling_keel.py        (standalone: torch + transformers, no keelctl)
    OUT/generation_config.json  end-of-text as eos/pad/bos
    OUT/model.safetensors       keelctl's state dict (a tied head is stored once)
    OUT/tokenizer.json, OUT/tokenizer_config.json

Everything is written into a temporary folder beside OUT and renamed into place, so OUT holds
either its old content or the complete export, never a part.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from keelctl.atomic import atomic_folder
from keelctl.errors import KeelError
from keelctl.export.tokenizer import tokenizer_files
from keelctl.model import ModelConfig, Transformer, sublayer_rules
from keelctl.model.residual import uses_final_norm
from keelctl.runs import MODEL_WEIGHTS, Run, config_hash

REMOTE_CODE = Path(__file__).parent / "remote_code"
CODE_FILES = ("configuration_keel.py", "modeling_keel.py")
# Model options modeling_keel.py reproduces; a new one must be added there before it exports.
EXPORTED_OPTIONS = frozenset(
    "vocab_size d_model n_heads n_kv_heads n_blocks ffn ffn_hidden rope_theta tie_embeddings "
    "norm_eps max_seq_len init_std residual alpha keel_first_block keel_inner_norm final_norm "
    "mix_ln_fraction qkv_norm embedding_norm".split()
)


def check_exportable(cfg: ModelConfig, model: Transformer) -> None:
    """Refuse (one line) a model with an option or a parameter modeling_keel.py lacks."""
    for name, field in type(cfg).model_fields.items():
        if name not in EXPORTED_OPTIONS and getattr(cfg, name) != field.default:
            raise KeelError(
                f"model option {name}={getattr(cfg, name)!r} is not supported by the HF export "
                "yet; export a run without it, or add it to keelctl/export/remote_code"
            )
    unknown = sorted(set(model.state_dict()) - expected_parameters(cfg))
    if unknown:
        raise KeelError(
            f"the HF export does not know the parameters {', '.join(unknown[:3])}; "
            "add them to keelctl/export/remote_code/modeling_keel.py first"
        )


def expected_parameters(cfg: ModelConfig) -> set[str]:
    """The state dict keys modeling_keel.py defines for this config."""
    rules = sublayer_rules(cfg)
    names = {"tok_emb.weight", "head.weight"}
    if uses_final_norm(cfg, rules):
        names.add("norm_f.weight")
    if cfg.embedding_norm:
        names.add("norm_emb.weight")
    ffn = ("w1", "w2", "w3") if cfg.ffn == "swiglu" else ("w1", "w2")
    for i, rule in enumerate(rules):
        qkv = [f"qkv_norm.{j}" for j in range(3)] if cfg.uses_qkv_norm else []
        kind, weights = ("attn", ("wq", "wk", "wv", "wo", *qkv)) if i % 2 == 0 else ("ffn", ffn)
        prefix = f"blocks.{i // 2}.{kind}"
        names |= {f"{prefix}.branch.{w}.weight" for w in weights}
        norms = ("norm_in", "norm_out", "norm_branch")
        names |= {f"{prefix}.{n}.weight" for n in norms if getattr(rule, n)}
    return names


def hf_config(cfg: ModelConfig, context: int, eot_id: int) -> dict:
    rules = sublayer_rules(cfg)
    return {
        "architectures": ["KeelForCausalLM"],
        "model_type": "keel",
        "auto_map": {
            "AutoConfig": "configuration_keel.KeelConfig",
            "AutoModelForCausalLM": "modeling_keel.KeelForCausalLM",
        },
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "num_hidden_layers": cfg.n_blocks,
        "intermediate_size": cfg.hidden,
        "ffn": cfg.ffn,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        # the context the run was trained at: what lm-eval's hf model uses as max_length
        "max_position_embeddings": context,
        "sublayer_rules": [dataclasses.asdict(r) for r in rules],
        "final_norm": uses_final_norm(cfg, rules),
        "qkv_norm": cfg.uses_qkv_norm,
        "embedding_norm": cfg.embedding_norm,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": eot_id,
        "dtype": "float32",
        "use_cache": True,
        "keelctl": {"model": cfg.model_dump(mode="json"), "config_hash": config_hash(cfg)},
    }


def _write_folder(folder: Path, model: Transformer, tokenizer, context: int) -> None:
    from safetensors.torch import save_file

    cfg = model.config
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        del tensors["head.weight"]  # transformers ties it back to tok_emb.weight
    save_file(tensors, str(folder / MODEL_WEIGHTS), metadata={"format": "pt"})
    config = hf_config(cfg, context, tokenizer.eot_id)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    ids = {k: tokenizer.eot_id for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (folder / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n")
    for name in CODE_FILES:
        shutil.copyfile(REMOTE_CODE / name, folder / name)
    for name, text in tokenizer_files(tokenizer, context).items():
        (folder / name).write_text(text, encoding="utf-8")


def export_hf(run_dir: Path, output: Path, *, context: int, force: bool = False) -> Path:
    """Write the run as a transformers folder at `output` (see the module docstring)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise KeelError(f"--output {output} is a file; give a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise KeelError(f"--output {output} is not empty; pass --force to replace it")
    model, tokenizer = Run(run_dir).load_model()
    check_exportable(model.config, model)
    needed = sum(t.nbytes for t in model.state_dict().values())
    with atomic_folder(output, needed) as tmp:
        _write_folder(tmp, model, tokenizer, context)
    return output
