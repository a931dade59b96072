"""Benchmark `keelctl prepare` (numbers in docs/data.md). Offline: the corpus is jsonl made
from this Python's standard-library sources, and the "GPT-2-style BPE" is a byte-level BPE
with GPT-2's vocabulary size (50,257) trained here, saved as a plain tokenizer.json.

    python scripts/bench_prepare.py corpus OUT_DIR --mb 500     # OUT_DIR/*.jsonl, ~500 MB
    python scripts/bench_prepare.py tokenizer OUT.json          # GPT-2-style BPE
    python scripts/bench_prepare.py throughput CORPUS --tokenizer byte|OUT.json --workers 2
    python scripts/bench_prepare.py rss CORPUS --cache DIR      # peak RSS of the process tree
    python scripts/bench_prepare.py startup CORPUS --cache DIR  # `keelctl train` to first step

Run the long ones with `nice -n 19` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "recipes" / "tiny-keel.yaml"


def make_corpus(out: Path, mb: int) -> None:
    """jsonl files of 64 MB, one record per stdlib file, repeated with a numbered header so
    every record (and its split key) is distinct."""
    from keelctl.data.corpora import python_stdlib_documents

    texts = [t for _, t in python_stdlib_documents() if t.strip()]
    out.mkdir(parents=True, exist_ok=True)
    written, part, copy = 0, 0, 0
    while written < mb * 1_000_000:
        with open(out / f"part-{part:04d}.jsonl", "w") as f:
            size = 0
            while size < 64_000_000 and written + size < mb * 1_000_000:
                for text in texts:
                    line = json.dumps({"text": f"# copy {copy}\n{text}"}) + "\n"
                    f.write(line)
                    size += len(line)
                copy += 1
        written += size
        part += 1
    print(f"{written / 1e6:.0f} MB of jsonl in {part} files under {out}")


def train_tokenizer(out: Path, sample_mb: int) -> None:
    from keelctl.data.corpora import python_stdlib_documents
    from keelctl.data.tokenizers import BPETokenizer

    texts, size = [], 0
    for _, text in python_stdlib_documents():
        texts.append(text)
        size += len(text)
        if size > sample_mb * 1_000_000:
            break
    start = time.monotonic()
    tok = BPETokenizer.train(texts, 50257)
    Path(out).write_text(tok.to_dict()["tokenizer_json"])
    print(f"BPE {tok.vocab_size} ids on {size / 1e6:.0f} MB in {time.monotonic() - start:.0f} s")


def throughput(corpus: str, tokenizer: str, workers: int) -> None:
    """keelctl's prepare vs bare `tokenizers` encode_batch (its own threads) on the same text."""
    from keelctl.data import prepare_tokens
    from keelctl.data.corpora import Corpus

    cache = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        start, cpu_start = time.monotonic(), _cpu_seconds()
        p = prepare_tokens(corpus, tokenizer, cache_dir=cache, workers=workers)
        seconds, cpu = time.monotonic() - start, _cpu_seconds() - cpu_start
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    n_bytes = sum(p.meta["splits"][s]["bytes"] for s in ("train", "val"))
    n_tokens = sum(p.meta["splits"][s]["tokens"] for s in ("train", "val"))
    rates = f"{n_bytes / 1e6 / seconds:.2f} MB/s, {n_tokens / 1e6 / seconds:.2f} M tokens/s"
    print(
        f"prepare {tokenizer}: {rates} ({seconds:.1f} s, {workers} workers); "
        f"{n_bytes / 1e6 / cpu:.2f} MB per CPU-second ({cpu:.1f} CPU-s with the workers)"
    )
    if tokenizer == "byte":
        return
    from tokenizers import Tokenizer

    os.environ.pop("TOKENIZERS_PARALLELISM", None)
    bare = Tokenizer.from_file(tokenizer)
    encode_seconds, encode_cpu, batch, total_tokens = 0.0, 0.0, [], 0
    docs = Corpus(corpus).documents()
    while True:  # only encode_batch is timed: reading and parsing the corpus is free here
        batch = [text for _, text in zip(range(1000), docs, strict=False)]
        if not batch:
            break
        t, c = time.monotonic(), _cpu_seconds()
        total_tokens += sum(len(e.ids) for e in bare.encode_batch(batch))
        encode_seconds += time.monotonic() - t
        encode_cpu += _cpu_seconds() - c
    print(
        f"bare encode_batch: {n_bytes / 1e6 / encode_seconds:.2f} MB/s, "
        f"{total_tokens / 1e6 / encode_seconds:.2f} M tokens/s ({encode_seconds:.1f} s, "
        f"{os.cpu_count()} cores); {n_bytes / 1e6 / encode_cpu:.2f} MB per CPU-second"
    )
    print(
        f"prepare / bare: {encode_seconds / seconds:.2f} by wall clock, "
        f"{encode_cpu / cpu:.2f} by CPU time"
    )


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its finished children."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _tree_memory(pid: int) -> tuple[int, int]:
    """(summed RSS, summed PSS) of a process and its children. Forked workers share the
    parent's pages, which RSS counts once per process and PSS splits between them."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = pss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss, pss


def _keelctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "keelctl", *args]


def rss(corpus: str, cache: Path, workers: int, tokenizer: str) -> None:
    """Peak summed RSS of `keelctl prepare` and its workers, sampled every 0.2 s."""
    cmd = _keelctl(
        "prepare", str(TINY_RECIPE), "--workers", str(workers),
        "--set", f"data.corpus={corpus}", "--set", "data.max_bytes=null",
        "--set", f"data.cache_dir={cache}", "--set", f"data.tokenizer={tokenizer}",
        "--set", "model.vocab_size=50304",
    )  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            peak[:] = map(max, peak, _tree_memory(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    print(out[-2000:], err[-2000:])
    rss, pss = (m / 2**20 for m in peak)
    print(
        f"process tree peak: RSS {rss:.0f} MiB, PSS {pss:.0f} MiB; {time.monotonic() - start:.0f} s"
    )


def startup(corpus: str, cache: Path) -> None:
    """Opening the prepared store in-process, then `keelctl train` from launch to the end of
    its first optimizer step (max_steps 1) on it."""
    from keelctl.data import prepare_tokens

    start = time.monotonic()
    p = prepare_tokens(corpus, cache_dir=cache)
    print(f"store found and opened in {time.monotonic() - start:.2f} s ({len(p.train):,} tokens)")
    run_dir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    cmd = _keelctl(
        "train", str(TINY_RECIPE), "--run-dir", str(run_dir / "run"), "--max-steps", "1",
        "--set", f"data.corpus={corpus}", "--set", "data.max_bytes=null",
        "--set", f"data.cache_dir={cache}", "--set", "trainer.val_every=1000",
        "--set", "data.val_tokens=128",
    )  # fmt: skip
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True)
    total = time.monotonic() - start
    print(result.stdout[-1500:], result.stderr[-1500:])
    metrics = run_dir / "run" / "metrics.csv"
    first = metrics.stat().st_mtime - (time.time() - time.monotonic()) - start
    print(f"command to end of step 1 (incl. writing the run): {total:.1f} s; "
          f"metrics.csv first written {first:.1f} s after launch")  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("out", type=Path)
    c.add_argument("--mb", type=int, default=500)
    t = sub.add_parser("tokenizer")
    t.add_argument("out", type=Path)
    t.add_argument("--sample-mb", type=int, default=30)
    th = sub.add_parser("throughput")
    th.add_argument("corpus")
    th.add_argument("--tokenizer", default="byte")
    th.add_argument("--workers", type=int, default=os.cpu_count())
    r = sub.add_parser("rss")
    r.add_argument("corpus")
    r.add_argument("--cache", type=Path, required=True)
    r.add_argument("--workers", type=int, default=os.cpu_count())
    r.add_argument("--tokenizer", default="byte")
    s = sub.add_parser("startup")
    s.add_argument("corpus")
    s.add_argument("--cache", type=Path, required=True)
    a = parser.parse_args()
    if a.cmd == "corpus":
        make_corpus(a.out, a.mb)
    elif a.cmd == "tokenizer":
        train_tokenizer(a.out, a.sample_mb)
    elif a.cmd == "throughput":
        throughput(a.corpus, a.tokenizer, a.workers)
    elif a.cmd == "rss":
        rss(a.corpus, a.cache, a.workers, a.tokenizer)
    else:
        startup(a.corpus, a.cache)


if __name__ == "__main__":
    main()
