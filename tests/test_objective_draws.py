"""An iteration's loss and gradients equal its input-view step followed by its synthetic step: drawing the prior's
camera and shading ahead of the input view's render, and marching both views before shading either (host work and
waits moved off the GPU's critical path), keep every random draw."""

from __future__ import annotations

import torch

from tests.test_normal_type import trainer_with_prior


def _gradients(trainer, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = [(name, p) for name, p in trainer.renderer.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    return {name: g for (name, _), g in zip(params, grads) if g is not None}


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
        apart, joint = _gradients(trainer, real.loss + synthetic.loss), _gradients(trainer, together.loss)
        assert apart.keys() == joint.keys() and any(g.abs().sum() > 0 for g in joint.values())
        for name, grad in joint.items():  # the two views' shares may add up in another order: rounding only
            torch.testing.assert_close(grad, apart[name], rtol=1e-5, atol=1e-6 * float(apart[name].abs().max()) + 1e-12,
                                       msg=name)
