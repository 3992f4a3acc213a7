"""Every trainable parameter reaches the optimiser exactly once, with its group's learning rate."""

import pytest
import torch

from nerf.optim import make_optimizer


@pytest.mark.parametrize("name", ["adam", "adamw", "adan"])
def test_every_parameter_is_optimised_once_even_from_generators(name):
    grid, mlp = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    groups = [{"params": grid.parameters(), "lr": 1e-2}, {"params": mlp.parameters(), "lr": 1e-3}]
    optimizer = make_optimizer(name, groups, 1e-3)
    seen = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(seen) == 4 and {id(p) for p in seen} == {id(p) for p in [*grid.parameters(), *mlp.parameters()]}
    scale = 5 if name == "adan" else 1
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-2 * scale, 1e-3 * scale])
    before = [p.detach().clone() for p in seen]
    mlp(grid(torch.ones(1, 3))).sum().backward()
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, seen))
