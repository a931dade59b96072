"""Analyses of trained runs: layer ablation (ablation.py), shared plotting helpers (plots.py)."""
