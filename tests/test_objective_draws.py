"""An iteration's loss equals its input-view step followed by its synthetic step: drawing the prior's camera and
shading ahead of the input view's render (host work moved off the GPU's critical path) keeps every random draw."""

from __future__ import annotations

import torch

from tests.test_normal_type import trainer_with_prior


def test_an_iteration_is_its_input_view_step_then_its_synthetic_step(tmp_path) -> None:
    _, _, trainer = trainer_with_prior(tmp_path, ["--iters", "100", "--albedo_iters", "2", "--real_iters", "0",
                                                  "--replace_synthetic_camera_every", "0"])
    objective = trainer.objective
    for step in (5, 6, 7):  # past the albedo steps: the shading is drawn too
        states = objective.generator.get_state(), torch.get_rng_state()
        together = objective(step)
        objective.generator.set_state(states[0])
        torch.set_rng_state(states[1])
        real = objective.real_step(step)
        synthetic = objective.synthetic_step(step, lambda: 1.0)
        assert set(together.terms) == set(real.terms) | set(synthetic.terms) and "image" in together.terms
        for name, value in {**real.terms, **synthetic.terms}.items():
            assert torch.equal(together.terms[name], value), name
        assert torch.equal(together.loss, real.loss + synthetic.loss)
