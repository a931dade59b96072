"""Data: corpora (streamed) -> tokenizers -> the token store (shards + manifest) -> windows.

Names are imported on first use, so a `keelctl prepare` worker process (which imports
keelctl.data.encode) does not pay for torch, which only the windows need."""

from importlib import import_module

_WHERE = {
    "BPETokenizer": "tokenizers",
    "ByteTokenizer": "tokenizers",
    "PretrainedTokenizer": "tokenizers",
    "Tokenizer": "tokenizers",
    "tokenizer_from_dict": "tokenizers",
    "load_documents": "corpora",
    "PreparedData": "store",
    "ShardedTokens": "store",
    "prepare_data_section": "prepare",
    "prepare_tokens": "prepare",
    "TrainWindows": "windows",
    "ValWindows": "windows",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'keelctl.data' has no attribute {name!r}")
    return getattr(import_module(f"keelctl.data.{_WHERE[name]}"), name)
