"""keelctl: train, evaluate and analyse very deep Keel and Pre-LN Transformer LMs."""

__version__ = "0.1.0"


def load_model(run_dir, device="cpu"):
    """(model, tokenizer) from a run dir; see keelctl.runs.load_model."""
    from keelctl.runs import load_model as _load

    return _load(run_dir, device)


__all__ = ["__version__", "load_model"]
