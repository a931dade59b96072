"""`keelctl repro`: the paper's protocols as plans of train / eval / analysis calls, a divergence
detector, and a report writer with verdicts computed by stated rules (docs/repro.md)."""

from keelctl.repro.protocol import make_context, plan_protocol, run_protocol

__all__ = ["make_context", "plan_protocol", "run_protocol"]
