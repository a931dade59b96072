"""keelctl.model.loss: the one next-token cross-entropy, checked against its equation, and the
eval and ablation scores that call it."""

from __future__ import annotations

import math

import torch

from keelctl.analysis.removal import nll_sum
from keelctl.eval.perplexity import token_scores
from keelctl.model import ModelConfig, build_model
from keelctl.model.loss import next_token_loss, token_nll


def test_token_nll_is_minus_log_softmax_of_the_target():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 5, dtype=torch.float64), torch.randint(0, 5, (2, 3))
    nll = token_nll(logits, targets)
    assert nll.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            row = logits[b, t].tolist()
            # -log p(y) = log sum_v exp(z_v) - z_y
            expected = math.log(sum(math.exp(z) for z in row)) - row[targets[b, t]]
            assert math.isclose(nll[b, t].item(), expected, rel_tol=1e-12)
    torch.testing.assert_close(next_token_loss(logits, targets), nll.mean())


def test_bf16_logits_are_scored_in_fp32():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 4, 7).bfloat16(), torch.randint(0, 7, (2, 4))
    assert token_nll(logits, targets).dtype == torch.float32
    assert next_token_loss(logits, targets).dtype == torch.float32
    torch.testing.assert_close(token_nll(logits, targets), token_nll(logits.float(), targets))


def test_perplexity_and_ablation_scores_are_the_training_loss():
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=32, n_heads=4, n_blocks=2)).eval()
    tokens = torch.randint(0, 257, (2, 12))
    x, y = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        loss = next_token_loss(model(x), y)
        logp, _ = token_scores(model, tokens)
        summed = nll_sum(model(x), y)
    torch.testing.assert_close(-logp.mean(), loss)
    torch.testing.assert_close(summed.item() / y.numel(), loss.item(), rtol=1e-6, atol=0)
