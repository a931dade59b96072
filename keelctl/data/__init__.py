"""Data: corpora -> documents -> cached token memmaps -> training/validation windows."""

from keelctl.data.corpora import load_documents
from keelctl.data.token_cache import PreparedData, prepare_data_section, prepare_tokens
from keelctl.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, tokenizer_from_dict
from keelctl.data.windows import TrainWindows, ValWindows

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "PreparedData",
    "Tokenizer",
    "TrainWindows",
    "ValWindows",
    "load_documents",
    "prepare_data_section",
    "prepare_tokens",
    "tokenizer_from_dict",
]
