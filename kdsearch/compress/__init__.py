"""A chosen student, retrained on train + validation and written as a model folder.

`retrain` picks the trial and trains it again; `folder` writes and reads the folder (model.pt,
model.pt2, model.onnx, architecture.json) through the safe loaders; `card` writes its
MODEL_CARD.md; `evaluate` holds every copy in a folder to the card.
"""

from kdsearch.compress.evaluate import evaluate
from kdsearch.compress.folder import load_model
from kdsearch.compress.retrain import (
    CompressResult,
    compress,
    dominating_trial,
    pick_trial,
    study_costs,
    trial_arch,
)

__all__ = ["CompressResult", "compress", "dominating_trial", "evaluate", "load_model",
           "pick_trial", "study_costs", "trial_arch"]
