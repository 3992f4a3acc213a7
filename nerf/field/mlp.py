"""The small fully connected networks shared by the geometry and the background."""

from __future__ import annotations

import torch.nn as nn


def mlp(dim_in: int, dim_out: int, dim_hidden: int, num_layers: int) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last), as in the original's tiny MLPs."""
    layers: list[nn.Module] = []
    for index in range(num_layers):
        width_in = dim_in if index == 0 else dim_hidden
        width_out = dim_out if index == num_layers - 1 else dim_hidden
        layers.append(nn.Linear(width_in, width_out))
        if index < num_layers - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
