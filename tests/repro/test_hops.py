"""`keelctl repro hops` at micro scale: Keel and Pre-LN trained on the hops corpus, scored per
hop count by the in-training eval, the report's table, figure and claims; the cpu plan."""

from __future__ import annotations

import re

from keelctl.eval.runner import evaluate_runs
from keelctl.repro import make_context, plan_protocol, run_protocol
from keelctl.repro.hops import TASKS, hop_accuracy
from keelctl.repro.plan import Outcome
from keelctl.runs import SUMMARY_JSON, Run

SMALL = ["data.corpus=builtin:hops-40", "data.max_bytes=null"]


def test_micro_protocol_reports_accuracy_per_hop_count(tmp_path):
    out = tmp_path / "hops"
    report = run_protocol("hops", "micro", 1, out, overrides=SMALL).read_text()
    assert re.search(
        r"\*\*Verdicts: \d+ reproduced, \d+ not at this scale, \d+ opposite "
        r"\(of 12 claims\)\.\*\*",  # per hop count: Keel vs Pre-LN at 2 depths, deep vs shallow
        report,
    )
    assert "acc k=4" in report and (out / "hops-accuracy.png").stat().st_size > 1000
    ctx = make_context("hops", "micro", 1, out, overrides=SMALL)
    specs = plan_protocol(ctx)
    assert {(s.scheme, s.depth) for s in specs} == {
        (k, d) for k in ("keel", "pre_ln") for d in (2, 4)
    }
    for spec in specs:
        assert (spec.run_dir / SUMMARY_JSON).is_file()
        assert f"| {spec.scheme} | {spec.depth} | 1/1 |" in report
    # the in-training score of the last step is `keelctl eval`'s score of the finished run
    deepest_keel = next(s for s in specs if (s.scheme, s.depth) == ("keel", 4))
    record = out / "records" / deepest_keel.name
    measured = hop_accuracy(Outcome(deepest_keel, record, Run(record).summary(), "trained now"))
    scored = evaluate_runs([deepest_keel.run_dir], tasks=list(TASKS), limit=4, batch_size=4)
    results = scored["runs"][0]["results"]
    assert measured == {k: results[f"keel_hops_k{k}"]["acc,none"] for k in (1, 2, 3, 4)}


def test_cpu_plan_is_keel_and_pre_ln_at_16_64_256_with_two_seeds(tmp_path):
    specs = plan_protocol(make_context("hops", "cpu", 2, tmp_path))
    assert sorted({(s.scheme, s.depth, s.seed) for s in specs}) == sorted(
        (k, d, s) for k in ("keel", "pre_ln") for d in (16, 64, 256) for s in (0, 1)
    )
    for spec in specs:
        t = spec.recipe.trainer
        assert t.eval_every == t.max_steps and t.eval_tasks == list(TASKS)
        assert spec.recipe.data.corpus.startswith("builtin:hops-")
