"""Analyses of trained runs and fresh models: layer ablation (ablation.py, removal.py), gradient
flow through depth (grad_flow.py), shared plotting helpers (plots.py)."""
