"""keelctl: train, evaluate and analyse very deep Keel and Pre-LN Transformer LMs."""

__version__ = "0.1.0"


def load_model(run_dir, device="cpu"):
    """(model, tokenizer) from a run dir, in eval mode; see keelctl.runs.Run.load_model."""
    from keelctl.runs import Run

    return Run(run_dir).load_model(device)


__all__ = ["__version__", "load_model"]
