"""DDIM inversion: from a clean latent to noisy latents at chosen timesteps (SatDiFuser Sec. 3.1).

SatDiFuser starts from the clean VAE latent and "employs DDIM inversion to trace a reverse noise path"
before reading the UNet's features on the noisy latents. With ``a_t`` the scheduler's cumulative product
of alphas (``alphas_cumprod``), DDIM's deterministic update (Song et al., "Denoising Diffusion Implicit
Models", ICLR 2021, eq. 12 with sigma_t = 0) predicts the clean sample and the noise from one model
output and moves the sample to another noise level:

    x0_hat = (z_s - sqrt(1 - a_s) * eps) / sqrt(a_s)                 (epsilon prediction)
    z_t    = sqrt(a_t) * x0_hat + sqrt(1 - a_t) * eps                 (eq. 12, sigma_t = 0)

Sampling runs it from high t to low t; inversion runs the same ODE step (eq. 13-14 read forwards in time)
from a level ``s`` to a higher level ``t``. For v-prediction models (Stable Diffusion 2.1, DiffusionSat;
Salimans & Ho 2022, "Progressive Distillation", Sec. 4 and App. D) the output is
``v = sqrt(a_s) * eps - sqrt(1 - a_s) * x0``, hence

    x0_hat = sqrt(a_s) * z_s - sqrt(1 - a_s) * v
    eps    = sqrt(a_s) * v   + sqrt(1 - a_s) * z_s

Which model call moves which latent (the convention of diffusers' ``DDIMInverseScheduler``, our reference
in the tests): the walk over timesteps ``t_1 < t_2 < ... < t_K`` starts at the clean latent ``z_0``
(``a = 1``). Call ``k`` evaluates the UNet at timestep ``t_k`` on the current latent ``z_{t_(k-1)}``, and its
output moves that latent to ``z_{t_k}``. This is inversion's usual approximation,
eps(z_(t_(k-1)), t_k) ~ eps(z_(t_k), t_k): every call already carries the timestep it moves to, so K
timesteps take exactly K calls, and the features of timestep ``t_k`` are those of call ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ...errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction")
#: How the extractor reads the features of timestep t (see :mod:`.extractor`): the inversion's own calls, or
#: the paper's UNet call on the inverted latent z_t.
INVERSION_MODES = ("reuse", "paper")

#: ``model_fn(latent, timestep)`` -> the model output, or None when the caller needs no further step.
ModelFn = Callable[[Tensor, int], "Tensor | None"]


def check_timesteps(timesteps: Sequence[int], num_train_timesteps: int) -> tuple[int, ...]:
    """Strictly increasing integers in ``[0, num_train_timesteps)``; a user may pick them, so UserError."""
    steps = tuple(int(t) for t in timesteps)
    if not steps:
        raise UserError("Choose at least one diffusion timestep")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise UserError(f"Diffusion timesteps must increase strictly; got {list(steps)}")
    if steps[0] < 0 or steps[-1] >= num_train_timesteps:
        raise UserError(f"Diffusion timesteps must lie in 0..{num_train_timesteps - 1}; got {list(steps)}")
    return steps


def inversion_grid(timesteps: Sequence[int], steps: int | None) -> tuple[int, ...]:
    """The timesteps a DDIM inversion of ``steps`` even steps from the clean latent to ``t_K`` visits:
    ``round(j t_K / steps)`` for j = 1..steps, with the chosen ``timesteps`` added (their latents are read),
    sorted and without repeats. ``steps`` None (or fewer than the chosen timesteps): the chosen timesteps alone.
    """
    chosen = tuple(int(t) for t in timesteps)
    if steps is None:
        return chosen
    if int(steps) < 1:
        raise UserError(f"The number of inversion steps must be at least 1; got {steps}")
    last = chosen[-1]
    even = {round(j * last / int(steps)) for j in range(1, int(steps) + 1)} - {0}
    return tuple(sorted(even | set(chosen)))


def predict_x0_and_eps(model_output: Tensor, sample: Tensor, alpha_prod: Tensor,
                       prediction_type: str) -> tuple[Tensor, Tensor]:
    """The clean sample and the noise that one model output implies at noise level ``alpha_prod``."""
    sqrt_a = alpha_prod.sqrt()
    sqrt_1ma = (1 - alpha_prod).sqrt()
    if prediction_type == "epsilon":
        return (sample - sqrt_1ma * model_output) / sqrt_a, model_output
    if prediction_type == "v_prediction":
        return sqrt_a * sample - sqrt_1ma * model_output, sqrt_a * model_output + sqrt_1ma * sample
    raise ValueError(f"prediction type {prediction_type!r} is not one of {PREDICTION_TYPES}")


def ddim_step(sample: Tensor, model_output: Tensor, alpha_from: Tensor, alpha_to: Tensor,
              prediction_type: str) -> Tensor:
    """One deterministic DDIM step (eq. 12, sigma_t = 0) from level ``alpha_from`` to ``alpha_to``."""
    x0_hat, eps = predict_x0_and_eps(model_output, sample, alpha_from, prediction_type)
    return alpha_to.sqrt() * x0_hat + (1 - alpha_to).sqrt() * eps


def ddim_invert(latents: Tensor, timesteps: Sequence[int], model_fn: ModelFn, alphas_cumprod: Tensor,
                prediction_type: str) -> list[Tensor]:
    """Walk the clean ``latents`` up through ``timesteps``; return ``[z_(t_1), ..., z_(t_K)]``.

    Call ``k`` is ``model_fn(z_(t_(k-1)), t_k)`` (with ``z_(t_0)`` the clean latent), see the module
    docstring. The arithmetic runs in float32 whatever the model's dtype; ``model_fn`` casts as it needs.
    When ``model_fn`` returns None (a caller that stopped the UNet early on its last call, having taken the
    features it wanted), the walk ends there and the trajectory is one latent shorter.
    """
    alphas = alphas_cumprod.to(device=latents.device, dtype=torch.float64)
    sample = latents.float()
    alpha_from = torch.ones((), dtype=torch.float64, device=latents.device)  # the clean latent: a = 1
    trajectory: list[Tensor] = []
    for t in timesteps:
        output = model_fn(sample, int(t))
        if output is None:
            break
        alpha_to = alphas[int(t)]
        sample = ddim_step(sample, output.float(), alpha_from.float(), alpha_to.float(), prediction_type)
        trajectory.append(sample)
        alpha_from = alpha_to
    return trajectory
