"""Tiny random-weight transformers models built from configs (no download) and a local
tokenizer trained here with `tokenizers`, saved as folders an analysis opens like any model."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("transformers") is None:  # the optional [hf] extra
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def hf_tokenizer():
    """A byte-level BPE with BOS and EOS, as transformers' fast tokenizer."""
    from tiny_hf import TEXT, VOCAB, transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory, hf_tokenizer):
    """family -> a saved folder (config, safetensors, tokenizer), built once per session."""
    import torch
    from tiny_hf import FAMILIES, transformers

    built: dict[str, str] = {}

    def make(family: str) -> str:
        if family not in built:
            torch.manual_seed(0)
            cfg = FAMILIES[family]()
            cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 0, 1, 1
            model = transformers.AutoModelForCausalLM.from_config(cfg)
            with torch.no_grad():  # visible branches: every removal moves the logits
                for p in model.parameters():
                    if p.dim() > 1:
                        p.normal_(0.0, 0.3)
            folder = tmp_path_factory.mktemp(family)
            model.save_pretrained(folder)
            hf_tokenizer.save_pretrained(folder)
            built[family] = str(folder)
        return built[family]

    return make
