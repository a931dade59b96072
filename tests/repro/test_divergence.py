"""The divergence detector on synthetic loss curves: one case per rule, and healthy curves."""

from __future__ import annotations

import math

import pytest

from keelctl.errors import KeelError
from keelctl.repro.divergence import DivergenceRules, detect_divergence, smoothed

N = 300
STEPS = list(range(N))
LRS = [5e-2 * (s + 1) / N for s in STEPS]  # linear ramp, as in max-lr
RULES = DivergenceRules(
    smooth=5,
    spike_factor=1.5,
    spike_steps=10,
    plateau_window=40,
    plateau_min_drop=0.01,
    check_after=0.1,
    slow_factor=1.5,
    slow_steps=10,
)


def healthy(step: int, noise: float = 0.03) -> float:
    """A decaying loss with a deterministic +-noise wiggle (like per-batch noise)."""
    return 2.0 + 3.5 * math.exp(-step / 60) + noise * math.sin(step * 2.3)


def test_healthy_curves_do_not_diverge():
    losses = [healthy(s) for s in STEPS]
    assert detect_divergence(STEPS, losses, LRS, RULES) is None
    # a recovered spike (5 points high, then back) is not a divergence
    spiky = [v * (3 if 150 <= s < 155 else 1) for s, v in zip(STEPS, losses, strict=True)]
    assert detect_divergence(STEPS, spiky, LRS, RULES) is None
    # a reference curve as good as the run itself: not slow
    assert detect_divergence(STEPS, losses, LRS, RULES, reference=losses) is None


def test_nan_at_the_first_non_finite_loss():
    losses = [healthy(s) for s in STEPS]
    losses[200] = math.nan
    d = detect_divergence(STEPS, losses, LRS, RULES)
    assert (d.step, d.rule, d.last_lr) == (200, "nan", LRS[199])
    inf = [healthy(s) for s in STEPS[:120]] + [math.inf]
    d = detect_divergence(STEPS[:121], inf, LRS[:121], RULES, total_steps=N)
    assert (d.step, d.rule) == (120, "nan")


def test_unrecovered_spike_reports_the_step_it_began():
    losses = [healthy(s) if s < 180 else 6.0 for s in STEPS]
    d = detect_divergence(STEPS, losses, LRS, RULES)
    assert d.rule == "spike"
    # the trailing mean of 5 crosses 1.5 x min (about 2.1 * 1.5) within the first 3 points
    assert 180 <= d.step <= 183
    assert d.last_lr == LRS[STEPS.index(d.step) - 1]


# a reference that keeps learning well below a plateau at healthy(100) ~ 2.66
LEARNING = [healthy(s, 0.0) - 0.5 * s / N for s in STEPS]


def test_early_plateau_reports_the_start_of_the_flat_window():
    losses = [healthy(s, noise=0.0) if s < 100 else healthy(100, noise=0.0) for s in STEPS]
    d = detect_divergence(STEPS, losses, LRS, RULES, reference=LEARNING)
    assert d.rule == "plateau"
    # the flat window must also sit 10% above the reference: 2.66 > 1.1 x LEARNING from
    # about step 118 on, so the first qualifying window starts there, not at step 100
    first_above = next(i for i in STEPS if i >= 100 and 2.6568 > 1.1 * LEARNING[i])
    assert first_above - 3 <= d.step <= first_above + 3
    # a curve that keeps falling by more than 1% per window is not a plateau
    falling = [healthy(s, 0.0) for s in STEPS]
    assert detect_divergence(STEPS, falling, LRS, RULES, reference=LEARNING) is None


def test_a_plateau_near_the_best_loss_is_healthy_saturation():
    """The calibration: the committed 64-sub-layer Keel curve saturated at the lowest loss of
    all schemes and the old plateau rule flagged it; a plateau within 10% of the reference
    (here: the run is its own reference, the best curve) is not a divergence."""
    losses = [healthy(s, noise=0.0) if s < 100 else healthy(100, noise=0.0) for s in STEPS]
    assert detect_divergence(STEPS, losses, LRS, RULES, reference=losses) is None
    assert detect_divergence(STEPS, losses, LRS, RULES) is None  # no reference: not checked


def test_plateau_is_not_checked_before_check_after():
    flat_start = [5.5] * 60 + [2.0 + 3.5 * math.exp(-i / 60) for i in range(N - 60)]
    ref = [2.0] * N
    rules = DivergenceRules(plateau_window=40, check_after=0.25)
    assert detect_divergence(STEPS, flat_start, LRS, rules, reference=ref).rule == "slow"
    d = detect_divergence(
        STEPS, flat_start, LRS, DivergenceRules(plateau_window=40, check_after=0), reference=ref
    )
    assert (d.rule, d.step) == ("plateau", 0)


def test_rules_scale_with_the_ramp():
    short, long = DivergenceRules.for_ramp(250), DivergenceRules.for_ramp(1000)
    assert (short.smooth, short.spike_steps, short.plateau_window) == (5, 10, 50)
    assert (long.smooth, long.spike_steps, long.plateau_window) == (20, 40, 200)
    assert short.spike_factor == long.spike_factor == 1.2


def test_abnormally_slow_against_a_reference():
    fast = [healthy(s) for s in STEPS]
    slow = [2.0 + 3.5 * math.exp(-s / 600) for s in STEPS]  # falls 10x slower
    d = detect_divergence(STEPS, slow, LRS, RULES, reference=fast)
    assert d.rule == "slow"
    ratio = [a / b for a, b in zip(smoothed(slow, 5), smoothed(fast, 5), strict=True)]
    first_above = next(i for i, r in enumerate(ratio) if r > 1.5 and i >= 30)
    assert d.step == first_above
    # without a reference the same curve is healthy (it still falls by more than 1% per window)
    assert detect_divergence(STEPS, slow, LRS, RULES) is None


def test_earliest_rule_wins():
    losses = [healthy(s) if s < 150 else 6.0 for s in STEPS]
    losses[250] = math.nan
    d = detect_divergence(STEPS, losses, LRS, RULES)
    assert d.rule == "spike" and d.step < 250


def test_divergence_at_the_first_point_has_no_last_lr():
    d = detect_divergence([0, 1], [math.nan, 1.0], [0.0, 1e-3], RULES)
    assert (d.step, d.last_lr) == (0, None)


def test_bad_inputs_and_rules():
    with pytest.raises(KeelError, match="one entry per logged point"):
        detect_divergence([0, 1], [1.0], [0.1, 0.2])
    with pytest.raises(KeelError, match="spike_factor"):
        DivergenceRules(spike_factor=1.0)
    with pytest.raises(KeelError, match="smooth"):
        DivergenceRules(smooth=0)
    assert detect_divergence([], [], []) is None


def test_early_stop_waits_until_the_verdict_cannot_change():
    """StopWhenDiverged stops only once no later point could move the detected divergence."""
    from types import SimpleNamespace

    import torch

    from keelctl.repro.callbacks import StopWhenDiverged

    stop = StopWhenDiverged(RULES, total_steps=N, every=1)
    trainer = SimpleNamespace(
        global_step=0, should_stop=False, optimizers=[SimpleNamespace(param_groups=[{"lr": 0.0}])]
    )
    losses = [healthy(s) if s < 150 else 6.0 for s in STEPS]
    stopped_at = None
    for s, loss in enumerate(losses):
        trainer.global_step = s + 1
        stop.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, s)
        if trainer.should_stop:
            stopped_at = s
            break
    full = detect_divergence(STEPS, losses, LRS, RULES)
    assert stopped_at == full.step + RULES.spike_steps + 1
    assert (
        detect_divergence(
            STEPS[: stopped_at + 1],
            losses[: stopped_at + 1],
            LRS[: stopped_at + 1],
            RULES,
            total_steps=N,
        )
        == full
    )
