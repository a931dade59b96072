"""Finding or preparing the token store of a recipe's data section (keelctl.data.build
builds one). The store's folder is CACHE/stores/KEY, KEY a hash of the corpus's cheap
fingerprint (file paths, sizes, mtimes; an hf dataset's name, config, split), the split
parameters and the tokenizer's identity, so finding a store never reads the corpus.

"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from keelctl.data.build import CACHE_ENV, Progress, StoreBuild
from keelctl.data.corpora import check_split_args, open_corpus
from keelctl.data.store import PreparedData, open_store, read_manifest
from keelctl.data.tokenizers import ByteTokenizer, Tokenizer, load_pretrained, tokenizer_digest
from keelctl.errors import KeelError

DEFAULT_SHARD_TOKENS = 100_000_000
DEFAULT_TOKENIZER_TRAIN_BYTES = 256_000_000


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "keelctl")


def prepare_tokens(
    spec: str,
    tokenizer_kind: str = "byte",
    *,
    vocab_size: int | None = None,
    val_fraction: float = 0.01,
    text_field: str = "text",
    hf_split: str = "train",
    max_bytes: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    tokenizer: Tokenizer | None = None,
    tokenizer_train_bytes: int = DEFAULT_TOKENIZER_TRAIN_BYTES,
    store: str | os.PathLike | None = None,
    workers: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: Progress | None = None,
    max_vocab_size: int | None = None,
) -> PreparedData:
    """The token store of a corpus, prepared on a miss.

    tokenizer_kind: "byte", "bpe" (trained on tokenizer_train_bytes of training documents,
    vocab_size ids), or a pretrained tokenizer (tokenizer.json, a folder, a hub name). A given
    `tokenizer` (a run's, for eval or resume) is used as is. `store` is an explicit store
    folder; else CACHE/stores/KEY, KEY from the corpus fingerprint, split and tokenizer.
    max_vocab_size (the model's) is checked before anything is tokenized."""
    check_split_args(val_fraction, max_bytes)
    params = {
        "val_fraction": val_fraction,
        "text_field": text_field,
        "hf_split": hf_split,
        "max_bytes": max_bytes,
    }
    if tokenizer is None:
        planned, ready = plan_tokenizer(tokenizer_kind, vocab_size, tokenizer_train_bytes)
    elif tokenizer_kind in ("byte", "bpe"):  # the store a run's recipe names, tried first
        planned = plan_tokenizer(tokenizer_kind, vocab_size, tokenizer_train_bytes)[0]
        ready = tokenizer
    else:  # pretrained: its identity is its digest, no need to load it again
        planned, ready = given_identity(tokenizer), tokenizer
    _check_vocab(ready, planned, max_vocab_size)
    if store is not None:
        found = _open_explicit(Path(store), spec, params, planned, tokenizer)
        if found is not None:
            return found
    corpus = open_corpus(spec, text_field, hf_split)
    fingerprint = corpus.fingerprint()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if tokenizer is not None and store is None:  # a run's tokenizer: first its recipe's store
        found = _open_if(_keyed_folder(cache, fingerprint, params, planned), tokenizer)
        if found is not None:
            return found
        planned = given_identity(tokenizer)
    folder = Path(store) if store else _keyed_folder(cache, fingerprint, params, planned)
    found = _open_if(folder, tokenizer)
    if found is not None:
        return found
    source = {"spec": corpus.spec, "fingerprint": fingerprint, "params": params}
    build = StoreBuild(folder, corpus, source, planned, ready, tokenizer_train_bytes, progress)
    build.run(workers or available_cores(), shard_tokens)
    return open_store(folder, read_manifest(folder), tokenizer)


def available_cores() -> int:
    """The cores this process may use (a container or taskset may allow fewer than exist)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def prepare_data_section(d, tokenizer: Tokenizer | None = None, **kwargs) -> PreparedData:
    """prepare_tokens for a recipe's `data` section (any object with DataConfig's fields;
    data/ does not import the config schema). kwargs: workers, progress."""
    return prepare_tokens(
        d.corpus,
        d.tokenizer,
        vocab_size=d.vocab_size,
        val_fraction=d.val_fraction,
        text_field=d.text_field,
        hf_split=d.split,
        max_bytes=d.max_bytes,
        cache_dir=d.cache_dir,
        tokenizer=tokenizer,
        tokenizer_train_bytes=getattr(d, "tokenizer_train_bytes", DEFAULT_TOKENIZER_TRAIN_BYTES),
        store=getattr(d, "store", None),
        shard_tokens=getattr(d, "shard_tokens", DEFAULT_SHARD_TOKENS),
        **kwargs,
    )


def plan_tokenizer(
    kind: str, vocab_size: int | None, train_bytes: int
) -> tuple[dict, Tokenizer | None]:
    """(identity: what names the tokenizer in a store key, the tokenizer when it exists
    before seeing the corpus; a BPE is trained only when a store is built)."""
    if kind == "byte":
        return {"kind": "byte"}, ByteTokenizer()
    if kind == "bpe":
        if vocab_size is None or vocab_size < 257:
            raise KeelError(
                f"tokenizer bpe needs vocab_size >= 257 (256 bytes + end-of-text), got {vocab_size}"
            )
        if train_bytes < 1:
            raise KeelError(f"data.tokenizer_train_bytes must be >= 1, got {train_bytes}")
        return {"kind": "bpe", "vocab_size": vocab_size, "train_bytes": train_bytes}, None
    if not isinstance(kind, str) or not kind.strip():
        raise KeelError("data.tokenizer is empty; use byte, bpe, a tokenizer.json or a hub name")
    pretrained = load_pretrained(kind.strip())
    return given_identity(pretrained), pretrained


def _check_vocab(tokenizer: Tokenizer | None, identity: dict, max_vocab_size: int | None) -> None:
    size = tokenizer.vocab_size if tokenizer is not None else identity.get("vocab_size")
    if max_vocab_size is not None and size is not None and size > max_vocab_size:
        raise KeelError(
            f"the tokenizer has {size} ids but model.vocab_size is {max_vocab_size}; raise "
            f"model.vocab_size to at least {size} (a multiple of 64 is faster on GPUs)"
        )


def given_identity(tokenizer: Tokenizer) -> dict:
    if isinstance(tokenizer, ByteTokenizer):
        return {"kind": "byte"}
    return {"kind": tokenizer.kind, "digest": tokenizer_digest(tokenizer)}


def _keyed_folder(cache: Path, fingerprint: dict, params: dict, identity: dict) -> Path:
    blob = json.dumps([fingerprint, params, identity], sort_keys=True).encode()
    return cache / "stores" / hashlib.sha256(blob).hexdigest()[:24]


def _open_if(folder: Path, tokenizer: Tokenizer | None) -> PreparedData | None:
    """The finished store in folder; None when unfinished or (given a tokenizer) made with
    another one."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    if tokenizer is not None and manifest["tokenizer"]["digest"] != tokenizer_digest(tokenizer):
        return None
    return open_store(folder, manifest, tokenizer)


def _open_explicit(
    folder: Path, spec: str, params: dict, identity: dict | None, tokenizer: Tokenizer | None
) -> PreparedData | None:
    """A finished store at data.store, checked against the recipe without reading the corpus
    (so a store copied to a machine without the corpus works)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    made_with = manifest["tokenizer"]
    if tokenizer is not None:
        same = made_with["digest"] == tokenizer_digest(tokenizer)
        wanted = f"the run's {tokenizer.kind} tokenizer"
    else:
        same = made_with["identity"] == identity
        wanted = f"data.tokenizer {identity.get('kind')}"
    if not same:
        raise KeelError(
            f"token store {folder} was made with another tokenizer ({_describe(made_with)}) "
            f"than {wanted}; point data.store at a new folder or set data.tokenizer to match"
        )
    source = manifest["source"]
    if source["spec"] != spec.strip() or source["params"] != params:
        raise KeelError(
            f"token store {folder} was made from corpus {source['spec']!r} with {source['params']}"
            f", not from the recipe's {spec!r} with {params}; point data.store at a new folder"
        )
    return open_store(folder, manifest, tokenizer)


def _describe(made_with: dict) -> str:
    source = made_with.get("source")
    return f"{made_with['kind']}" + (f" {source!r}" if source else "")
