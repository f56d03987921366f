"""EDM preconditioning as used to train Stable Video Diffusion (and so DICE-Talk), pure functions.

Karras et al. 2022 with sigma_data = 1 and SVD's v-prediction sign convention (facts §4):

    x_t    = x0 + sigma * eps
    c_in   = 1 / sqrt(sigma^2 + 1)
    c_skip = 1 / (sigma^2 + 1)
    c_out  = -sigma / sqrt(sigma^2 + 1)
    c_noise = 0.25 * ln(sigma)
    x0_hat = c_skip * x_t + c_out * F(c_in * x_t, c_noise)
    loss   = lambda(sigma) * ||x0_hat - x0||^2,   lambda(sigma) = (sigma^2 + 1) / sigma^2
    ln sigma ~ N(P_mean = 0.7, P_std = 1.6)   (community SVD fine-tuning)

`c_noise` is exactly the continuous timestep diffusers' `EulerDiscreteScheduler` (SVD config,
`timestep_type="continuous"`) feeds the UNet, so `sigma = exp(4 * timestep)`.
"""

from __future__ import annotations

import math

import torch


def _check_sigma(sigma: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if (sigma <= 0).any():
        raise ValueError(f"sigma must be > 0, got min {float(sigma.min())}")
    return sigma


def c_in(sigma: torch.Tensor) -> torch.Tensor:
    """Input scale 1 / sqrt(sigma^2 + 1); sigma (B,) > 0."""
    sigma = _check_sigma(sigma)
    return 1.0 / torch.sqrt(sigma**2 + 1.0)


def c_skip(sigma: torch.Tensor) -> torch.Tensor:
    """Skip weight 1 / (sigma^2 + 1)."""
    sigma = _check_sigma(sigma)
    return 1.0 / (sigma**2 + 1.0)


def c_out(sigma: torch.Tensor) -> torch.Tensor:
    """Output scale -sigma / sqrt(sigma^2 + 1) (v-prediction sign as in SVD)."""
    sigma = _check_sigma(sigma)
    return -sigma / torch.sqrt(sigma**2 + 1.0)


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """Noise conditioning 0.25 ln sigma (the UNet's `timestep`)."""
    sigma = _check_sigma(sigma)
    return 0.25 * torch.log(sigma)


def sigma_from_timestep(timestep: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`c_noise`: sigma = exp(4 t)."""
    return torch.exp(4.0 * torch.as_tensor(timestep, dtype=torch.float32))


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + 1) / sigma^2 (EDM with sigma_data = 1)."""
    sigma = _check_sigma(sigma)
    return (sigma**2 + 1.0) / sigma**2


def sample_sigmas(
    batch_size: int,
    p_mean: float = 0.7,
    p_std: float = 1.6,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """ln sigma ~ N(p_mean, p_std^2), shape (B,)."""
    if batch_size <= 0 or p_std < 0:
        raise ValueError(f"expected batch_size > 0 and p_std >= 0, got {batch_size}, {p_std}")
    gen_device = generator.device if generator is not None else device
    z = torch.randn(batch_size, generator=generator, device=gen_device)
    return torch.exp(p_mean + p_std * z).to(device if device is not None else z.device)


def _bcast(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.to(like.dtype).reshape(c.shape + (1,) * (like.ndim - c.ndim))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = x0 + sigma * eps; x0, noise (B, ...) and sigma (B,)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must match, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    return x0 + _bcast(sigma, x0) * noise


def precondition_input(x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """c_in * x_t, what the network sees."""
    return _bcast(c_in(sigma), x_t) * x_t


def x0_from_v(model_output: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0_hat = c_skip * x_t + c_out * F  (EDM eq. 7; also `EulerDiscreteScheduler`'s v-prediction)."""
    return _bcast(c_skip(sigma), x_t) * x_t + _bcast(c_out(sigma), x_t) * model_output


def v_target(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The F that makes x0_hat exact: F = (x0 - c_skip x_t) / c_out."""
    x_t = add_noise(x0, noise, sigma)
    return (x0 - _bcast(c_skip(sigma), x0) * x_t) / _bcast(c_out(sigma), x0)


def edm_loss(x0_hat: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
             pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weighted loss lambda(sigma) * mean(w * (x0_hat - x0)^2), shape (B,), in fp32.

    pixel_weight: optional, broadcastable to x0 (e.g. (B, T, 1, h, w)); None is w = 1.
    """
    if x0_hat.shape != x0.shape:
        raise ValueError(f"x0_hat and x0 must match, got {tuple(x0_hat.shape)} and {tuple(x0.shape)}")
    err = (x0_hat.float() - x0.float()) ** 2
    if pixel_weight is not None:
        err = err * pixel_weight.float()
    return loss_weight(sigma).float() * err.reshape(err.shape[0], -1).mean(dim=1)


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. sampling sigmas (num_steps,) descending, followed by 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    ramp = torch.linspace(0, 1, num_steps)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return torch.cat([inv**rho, torch.zeros(1)])


def sigma_for_ddpm_timestep(t: int, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> float:
    """sigma equal in noise level to DDPM step t of the scaled-linear schedule: sqrt((1-abar)/abar).

    The paper's "t < 500" gate is sigma < sigma_for_ddpm_timestep(500) ~= 1.62 here.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)[t]
    return float(math.sqrt((1 - abar) / abar))
