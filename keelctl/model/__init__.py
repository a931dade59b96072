"""The Keel/Pre-LN/Post-LN/DeepNorm/Mix-LN decoder-only LM.

from keelctl.model import ModelConfig, build_model
model = build_model(ModelConfig(residual="keel", n_blocks=8, d_model=128))
logits = model(idx)
"""

from keelctl.model.config import RESIDUALS, ModelConfig
from keelctl.model.residual import Rule, sublayer_rules
from keelctl.model.transformer import Block, Sublayer, Transformer, build_model, count_parameters

__all__ = [
    "RESIDUALS",
    "Block",
    "ModelConfig",
    "Rule",
    "Sublayer",
    "Transformer",
    "build_model",
    "count_parameters",
    "sublayer_rules",
]
