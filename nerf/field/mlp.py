"""The small fully connected networks shared by the geometry and the background."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


class MLP(nn.Sequential):
    """Linear layers with in-place ReLUs that run on 2-D rows whatever the input's leading dimensions.

    A linear layer returns a view for inputs of more than two dimensions, and an in-place ReLU on a view makes
    autograd copy the whole activation buffer in the backward (the [7, N, 64] activations of the finite-difference
    stencil: hundreds of MB per iteration); on [rows, features] no view and no copy arise.
    """

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        return super().forward(rows).reshape(*x.shape[:-1], -1)


def mlp(dim_in: int, dim_out: int, dim_hidden: int, num_layers: int) -> MLP:
    """Linear layers with ReLU between them (none after the last), as in the original's tiny MLPs."""
    layers: list[nn.Module] = []
    for index in range(num_layers):
        width_in = dim_in if index == 0 else dim_hidden
        width_out = dim_out if index == num_layers - 1 else dim_hidden
        layers.append(nn.Linear(width_in, width_out))
        if index < num_layers - 1:
            layers.append(nn.ReLU(inplace=True))
    return MLP(*layers)
