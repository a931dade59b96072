"""Training: the LightningModule, DataModule, callbacks and train(recipe, run_dir).

from keelctl.config import load_recipe
from keelctl.train import train
summary = train(load_recipe("recipes/tiny-keel.yaml"), "runs/tiny-keel")
"""

from keelctl.train.fit import default_run_dir, train

__all__ = ["default_run_dir", "train"]
