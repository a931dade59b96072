"""Helpers shared by the token-store tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def documents_from_tokens(tokens, tok) -> list[str]:
    """Cut a token stream at EOT ids and decode each document."""
    tokens = np.asarray(tokens)
    cuts = np.flatnonzero(tokens == tok.eot_id)
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tok.decode(tokens[a:b].tolist()) for a, b in zip(starts, cuts, strict=True)]


def folder_digest(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under folder."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_tokenizer_json(path: Path, texts: list[str], vocab_size: int = 300) -> Path:
    """A small byte-level BPE saved as a plain HF tokenizer.json, as a user would bring one."""
    from keelctl.data.tokenizers import BPETokenizer

    path.write_text(BPETokenizer.train(texts, vocab_size).to_dict()["tokenizer_json"])
    return path
