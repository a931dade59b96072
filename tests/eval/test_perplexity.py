"""Rolling-window perplexity: each token scored once, equal to a direct computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from keelctl.errors import KeelError
from keelctl.eval.perplexity import corpus_perplexity, rolling_windows, sequence_nll


def direct_nll(model, tokens: list[int], skip=None) -> float:
    """Sum of -log p over `tokens` scored in one pass after the end-of-text token 256."""
    ids = torch.tensor([[256, *tokens]])
    with torch.no_grad():
        logp = F.log_softmax(model(ids[:, :-1], skip=skip).double(), -1)
    return -logp[0, torch.arange(len(tokens)), ids[0, 1:]].sum().item()


@pytest.mark.parametrize("context_len", [1, 5, 16, None])
@pytest.mark.parametrize("n", [1, 16, 17, 50])
def test_rolling_windows_predict_every_token_once(n, context_len):
    tokens = list(range(1000, 1000 + n))
    windows = rolling_windows(tokens, 256, 16, context_len)
    scored = [t for seq, k in windows for t in seq[len(seq) - k :]]
    assert scored == tokens
    assert all(len(seq) <= 17 for seq, _ in windows)
    assert windows[0][0][0] == 256  # first window: end-of-text, then the document
    for seq, k in windows[1:]:  # later windows: at least context_len tokens before the first
        assert len(seq) == 17 and len(seq) - k >= (context_len or 8)


def test_rolling_windows_reject_bad_context():
    with pytest.raises(KeelError, match="rolling context"):
        rolling_windows([1, 2, 3], 256, 16, 17)


def test_document_in_context_equals_direct(tiny_model, byte_tokenizer):
    doc = "def f(x):\n    return x + 1\n"
    stats = corpus_perplexity(tiny_model, byte_tokenizer, [doc], batch_size=4)
    total = direct_nll(tiny_model, byte_tokenizer.encode(doc))
    assert stats["tokens"] == stats["bytes"] == len(doc)
    assert stats["nll"] == pytest.approx(total / len(doc), rel=1e-5)
    assert stats["ppl"] == pytest.approx(math.exp(total / len(doc)), rel=1e-5)
    assert stats["bits_per_byte"] == pytest.approx(total / math.log(2) / len(doc), rel=1e-5)


def test_long_documents_count_every_token_and_batch_invariant(tiny_model, byte_tokenizer):
    docs = ["x = 1\n" * 40, "print('héllo')\n" * 9, ""]  # 240 and 144 bytes > context 64
    one = corpus_perplexity(tiny_model, byte_tokenizer, docs, batch_size=1)
    many = corpus_perplexity(tiny_model, byte_tokenizer, docs, batch_size=16)
    n_tokens = sum(len(byte_tokenizer.encode(d)) for d in docs)
    assert one["tokens"] == many["tokens"] == n_tokens
    assert one["bytes"] == sum(len(d.encode()) for d in docs)
    assert one["nll"] == pytest.approx(many["nll"], rel=1e-5)
    # Full-context scoring (the model's RoPE takes any length) is close but not identical.
    full = corpus_perplexity(tiny_model, byte_tokenizer, docs, max_len=256)
    direct = sum(direct_nll(tiny_model, byte_tokenizer.encode(d)) for d in docs if d)
    assert full["nll"] * n_tokens == pytest.approx(direct, rel=1e-5)


def test_skip_scores_the_ablated_model(tiny_model, byte_tokenizer):
    doc = "import os\nos.getcwd()\n"
    ablated = corpus_perplexity(tiny_model, byte_tokenizer, [doc], skip=[1])
    assert ablated["nll"] * len(doc) == pytest.approx(
        direct_nll(tiny_model, byte_tokenizer.encode(doc), skip=[1]), rel=1e-5
    )
    assert ablated["nll"] != corpus_perplexity(tiny_model, byte_tokenizer, [doc])["nll"]


def test_sequence_nll_shape_and_values(tiny_model):
    tokens = torch.randint(0, 256, (3, 10))
    nll = sequence_nll(tiny_model, tokens)
    assert nll.shape == (3, 9) and (nll > 0).all()
    logp = F.log_softmax(tiny_model(tokens[:, :-1]), -1)
    assert torch.allclose(nll, -logp.gather(-1, tokens[:, 1:, None])[..., 0], atol=1e-5)


def test_empty_corpus_is_an_error(tiny_model, byte_tokenizer):
    with pytest.raises(KeelError, match="no text to score"):
        corpus_perplexity(tiny_model, byte_tokenizer, ["", ""])
