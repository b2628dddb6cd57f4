"""Full fine-tuning: every parameter of the backbone trains (the upper bound on training cost)."""
from torch import nn

import harness


@harness.register_method("full_ft", order=0, trains="all")
def full_ft(model: nn.Module, compression: object = None) -> nn.Module:
    """Full fine-tuning: all backbone parameters and the head train."""
    harness.set_trainable(model, lambda name: True)
    return model
