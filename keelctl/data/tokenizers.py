"""Tokenizers: byte-level (offline default, no training), a BPE trained locally with HF
`tokenizers`, and a pretrained HF tokenizer (a tokenizer.json, a folder holding one, or a hub
name). Each serialises to a small dict that travels in model.json and checkpoints; bpe and
pretrained dicts hold the full tokenizers JSON string under "tokenizer_json"."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from keelctl.errors import KeelError

EOT_TEXT = "<|endoftext|>"
# End-of-text tokens of common pretrained tokenizers, in the order they are looked for:
# GPT-2 / GPT-NeoX, Llama 3, Llama 2 / Mistral / T5, Gemma.
EOT_CANDIDATES = (EOT_TEXT, "<|end_of_text|>", "</s>", "<eos>")


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def to_dict(self) -> dict: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; id 256 is the end-of-text separator between documents."""

    kind = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": "byte"}


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenisation) from HF `tokenizers`."""

    kind = "bpe"

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size()
        self.eot_id = hf_tokenizer.token_to_id(EOT_TEXT)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many documents at once, in parallel in Rust (the token cache uses this)."""
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))

    def to_dict(self) -> dict:
        return {"kind": "bpe", "tokenizer_json": self._tok.to_str()}


class PretrainedTokenizer(BPETokenizer):
    """A ready-made HF `tokenizers` tokenizer (GPT-2's, Llama's, a user's tokenizer.json).

    Documents are encoded without the tokenizer's own special tokens (no BOS), each followed by
    eot_id, exactly like the built-in tokenizers. `source` is what data.tokenizer named."""

    kind = "pretrained"

    def __init__(self, hf_tokenizer, source: str, eot_id: int | None = None):
        self._tok, self.source = hf_tokenizer, source
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = find_eot_id(hf_tokenizer, source) if eot_id is None else eot_id

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def to_dict(self) -> dict:
        return {
            "kind": "pretrained",
            "source": self.source,
            "eot_id": self.eot_id,
            "vocab_size": self.vocab_size,
            "tokenizer_json": self._tok.to_str(),
        }


def find_eot_id(hf_tokenizer, source: str) -> int:
    for text in EOT_CANDIDATES:
        token_id = hf_tokenizer.token_to_id(text)
        if token_id is not None:
            return token_id
    raise KeelError(
        f"tokenizer {source!r} has none of the end-of-text tokens {', '.join(EOT_CANDIDATES)}; "
        "add one to its tokenizer.json as a special token"
    )


def load_pretrained(name: str) -> PretrainedTokenizer:
    """A tokenizer.json file, a folder holding one, or a hub repo name (network or HF cache)."""
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
        if not path.is_file():
            raise KeelError(
                f"data.tokenizer {name!r} is a folder without tokenizer.json; point it at a "
                "tokenizer.json, a folder holding one, or use byte or bpe"
            )
    if path.is_file():
        try:
            return PretrainedTokenizer(HFTokenizer.from_file(str(path)), name)
        except KeelError:
            raise
        except Exception as e:  # tokenizers raises a bare Exception for unparsable files
            first = _first_sentence(e)
            raise KeelError(
                f"data.tokenizer {str(path)!r} is not a Hugging Face tokenizer.json ({first}); "
                "give a tokenizer.json, a folder holding one, a hub name, byte or bpe"
            ) from None
    if name.startswith((".", "/", "~")) or name.endswith(".json"):
        raise KeelError(f"data.tokenizer {name!r} does not exist; check the path")
    from huggingface_hub import hf_hub_download

    try:  # huggingface_hub: the HF cache, HF_HUB_OFFLINE and `hf auth login` tokens (gated repos)
        local = hf_hub_download(name, "tokenizer.json")
    except Exception as e:  # not found, gated, offline, network: all say what to do the same way
        raise KeelError(
            f"tokenizer {name!r} could not be loaded from the Hugging Face hub or its cache "
            f"({type(e).__name__}: {_first_sentence(e)}); check the name, log in for gated "
            "repos, connect to the network, or give a local tokenizer.json"
        ) from None
    return PretrainedTokenizer(HFTokenizer.from_file(local), name)


def _first_sentence(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(e).__name__


def tokenizer_digest(tok: Tokenizer) -> str:
    """SHA-256 of a tokenizer's dict: equal digests, equal ids for every text."""
    return hashlib.sha256(json.dumps(tok.to_dict(), sort_keys=True).encode()).hexdigest()


def tokenizer_from_dict(spec: dict) -> Tokenizer:
    kind = spec.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind in ("bpe", "pretrained"):
        from tokenizers import Tokenizer as HFTokenizer

        hf_tokenizer = HFTokenizer.from_str(spec["tokenizer_json"])
        if kind == "bpe":
            return BPETokenizer(hf_tokenizer)
        return PretrainedTokenizer(hf_tokenizer, spec.get("source", ""), spec.get("eot_id"))
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'byte', 'bpe' or 'pretrained'")
