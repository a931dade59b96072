"""The run's tokenizer as files `transformers.AutoTokenizer` loads offline: tokenizer.json
(HF `tokenizers` format) and tokenizer_config.json.

bpe and pretrained runs already hold a tokenizers JSON; its post-processor is dropped because
keelctl encodes without special tokens (no BOS). The byte tokenizer is built here: a
byte-level model with no merges (ids 0-255 = bytes, GPT-2's byte-to-character table) plus the
special token <|endoftext|> = 256.
"""

from __future__ import annotations

import json

from keelctl.data.tokenizers import EOT_TEXT, Tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer_json() -> str:
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = {char: b for b, char in bytes_to_unicode().items()}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT_TEXT, special=True)])
    assert tok.token_to_id(EOT_TEXT) == 256
    return tok.to_str()


def tokenizer_files(tokenizer: Tokenizer, context: int) -> dict[str, str]:
    """{file name: text} for tokenizer.json and tokenizer_config.json."""
    spec = tokenizer.to_dict()
    if spec["kind"] == "byte":
        tokenizer_json = byte_tokenizer_json()
    else:
        data = json.loads(spec["tokenizer_json"])
        data["post_processor"] = None
        tokenizer_json = json.dumps(data, ensure_ascii=False)
    from tokenizers import Tokenizer as HFTokenizer

    eot = HFTokenizer.from_str(tokenizer_json).id_to_token(tokenizer.eot_id)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,  # a document starts after end-of-text, as in training
        "eos_token": eot,
        "pad_token": eot,
        "model_max_length": context,
        "clean_up_tokenization_spaces": False,
        # keelctl's byte tokenizer reads "<|endoftext|>" in a text as its 13 bytes
        "split_special_tokens": spec["kind"] == "byte",
    }
    return {
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
    }
