"""Blocks shared by two or more recbole_cdsr models."""

from torch import nn


def init_recbole_weights(module: nn.Module, std: float) -> None:
    """RecBole's (SASRec's) initialisation: N(0, std) weights, zero biases, LayerNorm 1/0.

    Use as ``self.apply(lambda m: init_recbole_weights(m, self.initializer_range))``.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
