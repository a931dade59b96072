"""KeelLM against direct computations with the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from keelctl.errors import KeelError
from keelctl.eval.lm_eval_adapter import KeelLM


def instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def direct_loglikelihood(model, context: str, continuation: str, max_len: int = 64) -> float:
    stripped = context.rstrip()  # lm-eval moves trailing whitespace into the continuation
    context, continuation = stripped, context[len(stripped) :] + continuation
    ctx = list(context.encode()) or [256]
    cont = list(continuation.encode())
    ids = torch.tensor([(ctx + cont)[-(max_len + 1) :]])
    with torch.no_grad():
        logp = F.log_softmax(model(ids[:, :-1]).double(), -1)[0]
    n = ids.shape[1] - 1
    return sum(logp[n - len(cont) + j, cont[j]].item() for j in range(len(cont)))


REQUESTS = [
    ("def add(a, b):\n", "    return a + b"),
    ("x =", " 1"),
    ("", "import os"),
    ("Question: 2 + 2 =", " 4"),
    ("# a long context " * 8, " that is cut on the left"),  # 136 + 24 bytes > 64
    ("for i in range(10):\n", "    print(i)"),
]


def test_loglikelihood_equals_direct_sum(tiny_model, byte_tokenizer):
    lm = KeelLM.from_model(tiny_model, byte_tokenizer, batch_size=4)
    got = lm.loglikelihood(instances("loglikelihood", REQUESTS), disable_tqdm=True)
    for (ctx, cont), (logp, _) in zip(REQUESTS, got, strict=True):
        assert logp == pytest.approx(direct_loglikelihood(tiny_model, ctx, cont), abs=1e-4)


def test_batched_equals_unbatched(tiny_model, byte_tokenizer):
    reqs = instances("loglikelihood", REQUESTS)
    one = KeelLM.from_model(tiny_model, byte_tokenizer, batch_size=1)
    many = KeelLM.from_model(tiny_model, byte_tokenizer, batch_size=len(REQUESTS))
    a, b = one.loglikelihood(reqs, disable_tqdm=True), many.loglikelihood(reqs, disable_tqdm=True)
    for (la, ga), (lb, gb) in zip(a, b, strict=True):
        assert la == pytest.approx(lb, abs=1e-4) and ga == gb


def test_rolling_loglikelihood_of_long_text_equals_token_by_token_sum(tiny_model, byte_tokenizer):
    text = "class Stack:\n    def push(self, x):\n        self.items.append(x)\n" * 2  # 130 bytes
    tokens, max_len = list(text.encode()), 32
    # rolling_context = max_len: after the first window, each token sees the max_len before it.
    lm = KeelLM.from_model(tiny_model, byte_tokenizer, max_length=max_len, rolling_context=max_len)
    (got,) = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]), True)
    expected = 0.0
    with torch.no_grad():
        for i, token in enumerate(tokens):
            context = [256, *tokens[:i]] if i < max_len else tokens[i - max_len : i]
            logp = F.log_softmax(tiny_model(torch.tensor([context])).double()[0, -1], -1)
            expected += logp[token].item()
    assert got == pytest.approx(expected, abs=1e-3)


def test_rolling_default_overlap_scores_every_token(tiny_model, byte_tokenizer):
    from keelctl.eval.perplexity import corpus_perplexity

    text = "while True:\n    pass\n" * 12  # 252 bytes, context 64
    lm = KeelLM.from_model(tiny_model, byte_tokenizer, batch_size=3)
    (got,) = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]), True)
    stats = corpus_perplexity(tiny_model, byte_tokenizer, [text])
    assert -got == pytest.approx(stats["nll"] * len(text), rel=1e-5)


def test_is_greedy_only_for_the_argmax_continuation(next_byte_lm, byte_tokenizer):
    lm = KeelLM.from_model(next_byte_lm, byte_tokenizer, batch_size=2)
    got = lm.loglikelihood(
        instances(
            "loglikelihood", [("abc", "def"), ("abc", "deX"), ("abc", "d"), ("", "abc"), ("", "b")]
        ),
        disable_tqdm=True,
    )
    assert [greedy for _, greedy in got] == [True, False, True, True, False]
    assert got[0][0] == pytest.approx(0.0, abs=1e-5) and got[1][0] < -10


def test_generate_until_is_greedy_with_stops_and_limits(next_byte_lm, byte_tokenizer):
    lm = KeelLM.from_model(next_byte_lm, byte_tokenizer)
    reqs = instances(
        "generate_until",
        [
            ("abc", {"until": ["g"], "max_gen_toks": 10}),
            ("abc", {"until": [], "max_gen_toks": 4}),
            ("xyz", {"until": ["never"], "max_gen_toks": 10}),  # '{|}~' then end-of-text
            ("0" * 40 + "a", {"until": ["e"], "max_gen_toks": 10}),  # context > 16: cut left
        ],
    )
    assert lm.generate_until(reqs, disable_tqdm=True) == ["def", "defg", "{|}~", "bcd"]


def test_generate_until_samples_when_asked(next_byte_lm, byte_tokenizer):
    lm = KeelLM.from_model(next_byte_lm, byte_tokenizer, batch_size=2)
    sampled = {"do_sample": True, "temperature": 0.7, "top_k": 1, "until": ["e"]}
    req = instances("generate_until", [("a", sampled), ("x", sampled)])
    assert lm.generate_until(req, disable_tqdm=True) == ["bcd", "yz{|}~"]  # top_k 1: greedy
    bad = instances("generate_until", [("a", {"do_sample": True, "top_p": 2.0})])
    with pytest.raises(KeelError, match="--top-p"):
        lm.generate_until(bad, disable_tqdm=True)


def test_batched_generate_until_equals_greedy_recomputation(tiny_model, byte_tokenizer):
    contexts = ["def f(x):", "import os\n", "# a longer comment line here\n", "x = [", "y"]
    kwargs = {"until": ["\n\n"], "max_gen_toks": 12}
    reqs = instances("generate_until", [(c, kwargs) for c in contexts])
    got = KeelLM.from_model(tiny_model, byte_tokenizer, batch_size=3).generate_until(reqs, True)
    for context, text in zip(contexts, got, strict=True):
        ids, new = list(context.encode()), []
        with torch.no_grad():
            for _ in range(12):
                token = int(tiny_model(torch.tensor([ids]))[0, -1].argmax())
                if token == 256:
                    break
                ids.append(token)
                new.append(token)
        assert text == byte_tokenizer.decode(new).split("\n\n")[0]


def test_default_context_is_the_trained_seq_len(trained_run_dir):
    lm = KeelLM(path=str(trained_run_dir), device="cpu")
    assert (lm.max_length, lm.model.config.max_seq_len) == (32, 64)  # data.seq_len, not max


def test_constructor_checks(model_run_dir, tmp_path):
    lm = KeelLM(path=str(model_run_dir), device="cpu", batch_size="4", max_length="32")
    assert (lm.batch_size, lm.max_length, lm.rolling_context) == (4, 32, 16)
    assert lm.get_model_info()["model_residual"] == "keel"
    with pytest.raises(KeelError, match="does not exist"):
        KeelLM(path=str(tmp_path / "missing"), device="cpu")
    with pytest.raises(KeelError, match="positive integer"):
        KeelLM(path=str(model_run_dir), device="cpu", batch_size="auto")
    with pytest.raises(KeelError, match="path=RUN_DIR"):
        KeelLM()


def test_registered_as_keel():
    from lm_eval.api.registry import get_model

    assert get_model("keel") is KeelLM
    assert get_model("dummy").__name__ == "DummyLM"  # the harness's own models still load
