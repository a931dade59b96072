"""Evaluation: held-out perplexity (perplexity.py), the lm-eval model `keel`
(lm_eval_adapter.py), bundled offline tasks (tasks/), and `keelctl eval` (runner.py).

Kept import-light: `from keelctl.eval.perplexity import corpus_perplexity` does not load the
harness's task machinery.
"""
