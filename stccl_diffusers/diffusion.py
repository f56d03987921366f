"""Single-step x0-hat and the t < 500 gate for the diffusers schedulers people train with.

Functional core for the reward callback (paper §8.3.3, ControlNet++-style): pure tensor functions,
no state beyond a small per-device cache of the scheduler's tables.

Supported schedulers (class -> prediction types):

* ``DDPMScheduler``, ``DDIMScheduler``: ``epsilon``, ``v_prediction``, ``sample``.
  Integer timesteps index ``alphas_cumprod``.
* ``EulerDiscreteScheduler``: ``epsilon``, ``v_prediction`` (and ``sample``), with discrete timesteps
  (fractional indices into the 1000-step training table, as Karras sigmas produce) or continuous
  timesteps (``timestep_type="continuous"`` with v-prediction, the SVD / DICE-Talk setting,
  ``t = 0.25 ln(sigma)``).
* ``EDMEulerScheduler``: ``epsilon``, ``v_prediction``; timesteps are ``precondition_noise(sigma)``.
* ``FlowMatchEulerDiscreteScheduler``: velocity; ``t = sigma * num_train_timesteps``.

How a timestep value becomes a sigma (sigma-based schedulers), in this order:

1. ``sigmas`` passed explicitly (per sample) are used as they are. Training loops that sample sigma
   directly (SVD fine-tuning: ``ln s ~ N(0.7, 1.6)``) should pass them: it is exact.
2. If the value equals an entry of the scheduler's current ``timesteps`` (relative tolerance 1e-5),
   the matching entry of ``scheduler.sigmas`` is used: this is what ``scheduler.step`` uses.
3. Otherwise the closed-form inverse of the scheduler's timestep map: Euler continuous and EDM
   ``sigma = exp(4 t)`` (inverse of ``c_noise = 0.25 ln sigma``; for EDM this is checked against
   ``precondition_noise`` once); Euler discrete: linear interpolation of ``ln sigma`` over the
   1000-step training table at the fractional index ``t`` (inverse of diffusers' ``_sigma_to_t``);
   flow matching ``sigma = t / num_train_timesteps``.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

__all__ = [
    "PRECONDITIONINGS",
    "predict_x0",
    "preconditioning_scheduler",
    "timestep_gate",
    "timesteps_to_sigmas",
    "gate_threshold",
    "gate_threshold_table",
    "gate_threshold_markdown",
    "SUPPORTED_SCHEDULERS",
]

_ALPHA_BAR = (DDPMScheduler, DDIMScheduler)
_EULER = (EulerDiscreteScheduler,)
_EDM = (EDMEulerScheduler,)
_FLOW = (FlowMatchEulerDiscreteScheduler,)

SUPPORTED_SCHEDULERS = {
    "DDPMScheduler": ("epsilon", "v_prediction", "sample"),
    "DDIMScheduler": ("epsilon", "v_prediction", "sample"),
    "EulerDiscreteScheduler": ("epsilon", "v_prediction", "sample"),
    "EDMEulerScheduler": ("epsilon", "v_prediction"),
    "FlowMatchEulerDiscreteScheduler": ("flow (velocity)",),
}


# Named preconditionings for loops without a scheduler object (SVD fine-tuning scripts sample sigma
# themselves): each is the diffusers scheduler whose x0 maths and gate it shares.
_SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
PRECONDITIONINGS = {
    # EDM with sigma_data = 1, v-prediction (SVD / DICE-Talk): x0 = x/(s^2+1) - s/sqrt(s^2+1) v,
    # timesteps are c_noise = 0.25 ln sigma; gate sigma < 1.62 (t = 500 of SVD's training table).
    "edm_v": lambda: EulerDiscreteScheduler(**_SD_BETAS, prediction_type="v_prediction",
                                            timestep_type="continuous"),
    # The DDPM family with SD's scaled-linear 0.00085..0.012 table (pass scheduler= for other betas).
    "ddpm_eps": lambda: DDPMScheduler(**_SD_BETAS, prediction_type="epsilon", clip_sample=False),
    "ddpm_v": lambda: DDPMScheduler(**_SD_BETAS, prediction_type="v_prediction", clip_sample=False),
    "ddpm_sample": lambda: DDPMScheduler(**_SD_BETAS, prediction_type="sample", clip_sample=False),
    # Rectified flow (SD3 / Flux): x_t = s eps + (1 - s) x0, velocity output, t = 1000 s.
    "flow": lambda: FlowMatchEulerDiscreteScheduler(),
}


def preconditioning_scheduler(name: str):
    """The diffusers scheduler that stands for the named preconditioning (``PRECONDITIONINGS``)."""
    if name not in PRECONDITIONINGS:
        raise ValueError(f"expected preconditioning one of {sorted(PRECONDITIONINGS)}, got {name!r}")
    return PRECONDITIONINGS[name]()


def _supported_text() -> str:
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in SUPPORTED_SCHEDULERS.items())


def _family(scheduler) -> str:
    # Exact class families only: subclasses with different maths (e.g. ancestral variants) would be
    # silently wrong, so they must be added here deliberately.
    if isinstance(scheduler, _ALPHA_BAR):
        family = "alpha_bar"
    elif isinstance(scheduler, _EULER):
        family = "euler"
    elif isinstance(scheduler, _EDM):
        family = "edm"
    elif isinstance(scheduler, _FLOW):
        family = "flow"
    else:
        raise ValueError(
            f"unsupported scheduler {type(scheduler).__name__}; supported schedulers and prediction types: "
            f"{_supported_text()}"
        )
    if family != "flow":
        pred = scheduler.config.prediction_type
        allowed = SUPPORTED_SCHEDULERS[
            {"alpha_bar": "DDPMScheduler", "euler": "EulerDiscreteScheduler", "edm": "EDMEulerScheduler"}[family]
        ]
        if pred == "original_sample":  # diffusers' legacy alias
            pred = "sample"
        if pred not in allowed:
            raise ValueError(
                f"unsupported prediction_type {scheduler.config.prediction_type!r} for {type(scheduler).__name__}; "
                f"supported: {_supported_text()}"
            )
    return family


def _prediction_type(scheduler) -> str:
    pred = scheduler.config.prediction_type
    return "sample" if pred == "original_sample" else pred


def _on(scheduler, name: str, src: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``src`` as fp32 on ``device``, cached on the scheduler so a training step does no host copy."""
    cache = scheduler.__dict__.setdefault("_stccl_cache", {})
    key = (name, str(device))
    hit = cache.get(key)
    if hit is not None and hit[0] is src:
        return hit[1]
    moved = src.detach().to(device=device, dtype=torch.float32)
    cache[key] = (src, moved)
    return moved


def _as_timesteps(timesteps, n: int, device) -> torch.Tensor:
    t = torch.as_tensor(timesteps, device=device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"expected timesteps as a scalar or shape ({n},) (one per sample), got {tuple(t.shape)}")
    return t


def _train_log_sigmas(scheduler, device) -> torch.Tensor:
    """ln sigma of the 1000-step training table, ascending with t (``sigma_t = sqrt((1 - abar_t)/abar_t)``)."""
    ac = _on(scheduler, "alphas_cumprod", scheduler.alphas_cumprod, device)
    return 0.5 * (torch.log1p(-ac) - torch.log(ac))


def timesteps_to_sigmas(scheduler, timesteps, sigmas: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample sigma (fp32, shape (N,)) for a sigma-based scheduler; see the module docstring for the rules.

    Args:
        scheduler: ``EulerDiscreteScheduler``, ``EDMEulerScheduler`` or ``FlowMatchEulerDiscreteScheduler``.
        timesteps: (N,) the values fed to the denoiser.
        sigmas: optional (N,) sigmas; when given they win.
    """
    family = _family(scheduler)
    t = torch.as_tensor(timesteps)
    if t.ndim == 0:
        t = t.reshape(1)
    device = t.device
    if sigmas is not None:
        s = torch.as_tensor(sigmas, device=device).float().reshape(-1)
        if s.shape[0] != t.shape[0] and s.shape[0] != 1:
            raise ValueError(f"expected sigmas of shape ({t.shape[0]},), got {tuple(s.shape)}")
        return s.expand(t.shape[0])
    t = t.float()
    if family == "alpha_bar":
        ac = _on(scheduler, "alphas_cumprod", scheduler.alphas_cumprod, device)
        a = ac[t.long()]
        return ((1 - a) / a).sqrt()
    if family == "flow":
        return t / float(scheduler.config.num_train_timesteps)
    if family == "euler" and not _euler_continuous(scheduler):
        log_sig = _train_log_sigmas(scheduler, device)
        n = log_sig.shape[0]
        tc = t.clamp(0, n - 1)
        lo = tc.floor().long().clamp(max=n - 2)
        w = tc - lo.float()
        closed = torch.exp((1 - w) * log_sig[lo] + w * log_sig[lo + 1])
    else:
        # Euler continuous and EDM: c_noise = 0.25 ln sigma.
        closed = torch.exp(4.0 * t)
        if family == "edm":
            _check_edm_noise_map(scheduler)
    # Prefer the scheduler's own (timesteps, sigmas) table entry when the value is one of them.
    table_t = _on(scheduler, "timesteps", scheduler.timesteps, device)
    table_s = _on(scheduler, "sigmas", scheduler.sigmas, device)[: table_t.shape[0]]
    diff = (t[:, None] - table_t[None, :]).abs()
    best, idx = diff.min(dim=1)
    matched = best <= 1e-5 * (1.0 + t.abs())
    return torch.where(matched, table_s[idx], closed)


def _euler_continuous(scheduler) -> bool:
    # diffusers uses c_noise = 0.25 ln sigma only for this combination (see EulerDiscreteScheduler.__init__).
    return (
        getattr(scheduler.config, "timestep_type", "discrete") == "continuous"
        and scheduler.config.prediction_type == "v_prediction"
    )


def _check_edm_noise_map(scheduler) -> None:
    if scheduler.__dict__.get("_stccl_edm_checked"):
        return
    probe = torch.tensor([0.01, 1.0, 50.0])
    back = torch.exp(4.0 * scheduler.precondition_noise(probe).float())
    if not torch.allclose(back, probe, rtol=1e-4):
        raise ValueError(
            f"{type(scheduler).__name__}.precondition_noise is not 0.25*ln(sigma) in this diffusers version; "
            "pass `sigmas=` explicitly"
        )
    scheduler.__dict__["_stccl_edm_checked"] = True


def _expand(c: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return c.reshape(c.shape[0], *([1] * (ref.ndim - 1)))


def predict_x0(
    scheduler,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: Union[torch.Tensor, float, int],
    sigmas: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Single-step x0-hat from the denoiser output (never clipped).

    Args:
        scheduler: a supported diffusers scheduler (module docstring); only its config and tables are read.
        model_output: (N, ...) denoiser output, e.g. (N, C, h, w) or (N, T, C, h, w) latents-shaped.
        sample: (N, ...) the noisy input x_t, same shape (unscaled: for Euler/EDM the sample *before*
            ``scale_model_input``, i.e. ``x0 + sigma * eps``).
        timesteps: scalar or (N,) per-sample timesteps, the values given to the denoiser.
        sigmas: optional (N,) sigmas for sigma-based schedulers (exact; overrides the timestep map).

    Returns:
        x0_hat with the shape and dtype of ``sample``; the maths runs in fp32.

    Formulas (``abar`` = alphas_cumprod[t], ``s`` = sigma):
        DDPM/DDIM  eps: ``(x - sqrt(1-abar) e) / sqrt(abar)``;  v: ``sqrt(abar) x - sqrt(1-abar) v``;  sample: output.
        Euler      eps: ``x - s e``;  v: ``x/(s^2+1) - s/sqrt(s^2+1) v``  (EDM with sigma_data = 1).
        EDM        ``c_skip x + c_out F`` with ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = +-s sd/sqrt(s^2+sd^2)``.
        Flow       ``x - s v``  (``x_t = s eps + (1 - s) x0``).
    """
    if model_output.shape != sample.shape:
        raise ValueError(
            f"expected model_output and sample of the same shape, got {tuple(model_output.shape)} and "
            f"{tuple(sample.shape)}"
        )
    family = _family(scheduler)
    n = sample.shape[0]
    t = _as_timesteps(timesteps, n, sample.device)
    x = sample.float()
    out = model_output.float()
    pred = _prediction_type(scheduler) if family != "flow" else "flow"

    if family == "alpha_bar":
        tl = t.round().long() if t.is_floating_point() else t.long()
        num = scheduler.alphas_cumprod.shape[0]
        if tl.device.type == "cpu" and (tl.min() < 0 or tl.max() >= num):  # no host sync on accelerators
            raise ValueError(f"expected integer timesteps in [0, {num}), got range [{int(tl.min())}, {int(tl.max())}]")
        ac = _on(scheduler, "alphas_cumprod", scheduler.alphas_cumprod, x.device)[tl]
        a = _expand(ac.sqrt(), x)
        b = _expand((1 - ac).sqrt(), x)
        if pred == "epsilon":
            x0 = (x - b * out) / a
        elif pred == "v_prediction":
            x0 = a * x - b * out
        else:
            x0 = out
    else:
        s = _expand(timesteps_to_sigmas(scheduler, t, sigmas), x)
        if family == "flow":
            x0 = x - s * out
        elif family == "euler":
            if pred == "epsilon":
                x0 = x - s * out
            elif pred == "v_prediction":
                x0 = x / (s**2 + 1) - s / (s**2 + 1).sqrt() * out
            else:
                x0 = out
        else:  # edm
            sd = float(scheduler.config.sigma_data)
            c_skip = sd**2 / (s**2 + sd**2)
            c_out = s * sd / (s**2 + sd**2).sqrt()
            x0 = c_skip * x + (c_out if pred == "epsilon" else -c_out) * out
    return x0.to(sample.dtype)


def gate_threshold(scheduler, gate_timestep: float = 500) -> tuple[str, float]:
    """The gate's threshold in the scheduler's own units: ``("timestep", t)`` or ``("sigma", s)``.

    Sigma-based schedulers convert ``gate_timestep`` through their 1000-step training noise schedule:
    Euler ``s = sqrt((1 - abar_t)/abar_t)`` (about 1.62 at t = 500 for SVD's scaled-linear 0.00085..0.012);
    EDM: the training ramp position ``1 - t/N`` of its Karras (or exponential) schedule; flow matching
    ``s = t / N``.
    """
    family = _family(scheduler)
    n = int(scheduler.config.num_train_timesteps)
    if family == "alpha_bar":
        return "timestep", float(gate_timestep)
    if family == "flow":
        return "sigma", float(gate_timestep) / n
    if family == "euler":
        ac = scheduler.alphas_cumprod.double()
        ti = min(max(float(gate_timestep), 0.0), n - 1)
        lo = min(int(math.floor(ti)), n - 2)
        w = ti - lo
        log_s = 0.5 * (torch.log1p(-ac) - torch.log(ac))
        return "sigma", float(torch.exp((1 - w) * log_s[lo] + w * log_s[lo + 1]))
    cfg = scheduler.config
    ramp = 1.0 - float(gate_timestep) / n
    smin, smax = float(cfg.sigma_min), float(cfg.sigma_max)
    if getattr(cfg, "sigma_schedule", "karras") == "exponential":
        return "sigma", math.exp(math.log(smax) + ramp * (math.log(smin) - math.log(smax)))
    rho = float(cfg.rho)
    return "sigma", (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho


def timestep_gate(
    scheduler,
    timesteps: Union[torch.Tensor, float, int],
    gate_timestep: float = 500,
    sigmas: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Boolean (N,) mask of samples less noisy than ``gate_timestep`` (paper §8.3.3: reward only when t < 500).

    Discrete-timestep schedulers (DDPM, DDIM) compare t directly; sigma-based schedulers compare the
    per-sample sigma (``timesteps_to_sigmas``) with ``gate_threshold``. No host sync.
    """
    kind, thr = gate_threshold(scheduler, gate_timestep)
    t = torch.as_tensor(timesteps)
    if t.ndim == 0:
        t = t.reshape(1)
    if kind == "timestep":
        return t < thr
    return timesteps_to_sigmas(scheduler, t, sigmas) < thr


def gate_threshold_table(gate_timestep: float = 500) -> list[dict]:
    """Rows ``{scheduler, setting, unit, threshold}`` for the common training configurations (docs table)."""
    sd_betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    configs = [
        ("DDPMScheduler", "SD 1.x/2.x (scaled_linear 0.00085..0.012)", DDPMScheduler(**sd_betas)),
        ("DDIMScheduler", "SD 1.x/2.x (scaled_linear 0.00085..0.012)", DDIMScheduler(**sd_betas)),
        ("EulerDiscreteScheduler", "SVD / DICE-Talk (scaled_linear, v, continuous, Karras)",
         EulerDiscreteScheduler(**sd_betas, prediction_type="v_prediction", timestep_type="continuous",
                                use_karras_sigmas=True)),
        ("EulerDiscreteScheduler", "SD (scaled_linear, epsilon, discrete)", EulerDiscreteScheduler(**sd_betas)),
        ("EulerDiscreteScheduler", "linear 0.0001..0.02 (DDPM paper)",
         EulerDiscreteScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")),
        ("EDMEulerScheduler", "defaults (Karras rho=7, 0.002..80)", EDMEulerScheduler()),
        ("FlowMatchEulerDiscreteScheduler", "SD3 / Flux (any shift)", FlowMatchEulerDiscreteScheduler()),
    ]
    rows = []
    for name, setting, sch in configs:
        unit, thr = gate_threshold(sch, gate_timestep)
        rows.append({"scheduler": name, "setting": setting, "unit": unit, "threshold": thr})
    return rows


def gate_threshold_markdown(gate_timestep: float = 500) -> str:
    """``gate_threshold_table`` as the Markdown table in docs/callback.md (a test keeps the two equal)."""
    lines = [
        f"| scheduler | setting | compares | threshold at t = {gate_timestep:g} |",
        "| --- | --- | --- | --- |",
    ]
    for r in gate_threshold_table(gate_timestep):
        lines.append(f"| {r['scheduler']} | {r['setting']} | {r['unit']} | {r['threshold']:.4f} |")
    return "\n".join(lines)
