"""readings.py's grouping rules, shared by several protocols: which ramps share a divergence
reference (max-lr, scale-map) and how variant runs are grouped (design, precision)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from keelctl.repro.divergence import DivergenceRules
from keelctl.repro.readings import Curve, detect_ramps, variant_groups

PEAK = 5e-2
STEPS = list(range(300))
LRS = [PEAK * (s + 1) / len(STEPS) for s in STEPS]  # max-lr's linear ramp
FAST = [2.0 + 3.5 * math.exp(-s / 60) + 0.03 * math.sin(s * 2.3) for s in STEPS]
SLOW = [2.0 + 3.5 * math.exp(-s / 600) for s in STEPS]  # falls 10x slower than FAST


def ramp(scheme: str, seed: int, losses: list[float], steps: int = len(STEPS)) -> Curve:
    recipe = SimpleNamespace(
        trainer=SimpleNamespace(max_steps=steps), optim=SimpleNamespace(lr=PEAK)
    )
    spec = SimpleNamespace(scheme=scheme, depth=4, seed=seed, recipe=recipe)
    return Curve(spec, STEPS, losses, LRS)


def test_a_ramp_is_judged_against_its_own_depth_seed_and_length_only():
    keel = ramp("keel", 0, FAST)
    beside = ramp("pre_ln", 0, SLOW)  # same depth, seed and length as keel: keel is its reference
    other_seed = ramp("pre_ln", 1, SLOW)  # alone in its group: no faster reference
    longer = ramp("pre_ln", 0, SLOW, steps=2 * len(STEPS))  # another ramp length: alone too
    lengths = []

    def rules_for(steps: int):
        lengths.append(steps)
        return DivergenceRules.for_ramp(steps)

    detect_ramps([keel, beside, other_seed, longer], rules_for)
    assert beside.found is not None and beside.found.rule == "slow"
    assert beside.max_lr == beside.found.last_lr < PEAK
    for c in (keel, other_seed, longer):
        assert c.found is None and c.max_lr == PEAK  # never diverged: counted as the peak
    assert sorted(set(lengths)) == [len(STEPS), 2 * len(STEPS)]


def test_variant_groups_follow_the_plan_and_keep_unrecorded_variants_empty():
    def spec(variant: str, depth: int, seed: int):
        return SimpleNamespace(run_dir=f"{variant}-L{depth}-s{seed}", depth=depth)

    planned = [(v, spec(v, d, s)) for d in (64, 16) for s in (0, 1) for v in ("keel", "naive")]
    recorded = [SimpleNamespace(spec=s) for v, s in planned if (v, s.depth) != ("naive", 16)]
    groups = variant_groups(planned, recorded[::-1], lambda s: s.depth)
    assert list(groups) == [64, 16]  # plan order, not sorted
    assert list(groups[64]) == ["keel", "naive"]
    assert [o.spec.run_dir for o in groups[64]["keel"]] == ["keel-L64-s1", "keel-L64-s0"]
    assert groups[16]["naive"] == []
