"""How many images each epoch trains on, and so how many optimizer steps the run takes.

A cheaper fidelity for early-stopping's first rungs (issue 20): the first
`recipe.early_epochs` epochs each train on a fresh random `recipe.early_fraction` of the
training images, the later ones on all of them. The learning-rate schedule counts the steps
the run really takes, so a warm-up and a one-cycle still end where the recipe says.
"""

from __future__ import annotations

import math

from kdsearch.spec import TrainRecipe


def epoch_images(n: int, recipe: TrainRecipe) -> list[int]:
    """Images trained on in each epoch (index 0 is epoch 1): ceil(fraction * n) early, else n."""
    early = min(math.ceil(recipe.early_fraction * n), n) if recipe.early_epochs else n
    return [early if e < recipe.early_epochs else n for e in range(recipe.epochs)]


def epoch_steps(n: int, recipe: TrainRecipe) -> list[int]:
    """Optimizer steps (batches) in each epoch: a short last batch is a step too."""
    return [math.ceil(m / recipe.batch_size) for m in epoch_images(n, recipe)]


def steps_until(epochs: float, steps: list[int]) -> int:
    """The step at which `epochs` (fractions allowed) epochs of `steps` are done."""
    if len(set(steps)) <= 1:  # equal epochs: the arithmetic of before, to the same rounding
        return round(epochs * steps[0]) if steps else 0
    whole = min(int(epochs), len(steps))
    done = sum(steps[:whole])
    if whole < len(steps):
        done += round((epochs - whole) * steps[whole])
    return done
