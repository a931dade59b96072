"""Export: a run dir as a Hugging Face transformers folder (hf.py, tokenizer.py) whose model
code (remote_code/) loads with trust_remote_code=True and without keelctl."""

from keelctl.export.hf import export_hf

__all__ = ["export_hf"]
