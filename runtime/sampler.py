"""DDIM as Hallo2 runs it: linear betas rescaled to zero terminal SNR, trailing spacing,
v-prediction, eta 0, classifier-free guidance (docs/model.md §1.7).

Small pure functions (docs/style.md §4): ``ddim_schedule`` precomputes the timesteps and, per
step, the two coefficients of ``x_prev = a_t * x + b_t * v`` (the ``denoiser_step`` engine applies
them, with the CFG combine, inside the graph; ``runtime/steploop.py`` runs the loop);
``cfg_combine`` is the guidance formula for loops outside an engine (the official-style
baseline).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..engines.errors import OptionError


@dataclass(frozen=True)
class DDIMSchedule:
    """Per-step tables for one step count (all on the CPU; move them once to the device).

    ``denoiser_step`` returns ``a x + b v`` (guided v). For DDIM that is the next latents. A
    multistep sampler sets ``a, b`` so the engine returns the guided x0 prediction ``m`` and
    gives ``mix`` (S, 3): the next latents are ``mix[:, 0] x + mix[:, 1] m + mix[:, 2] m_prev``
    (``m_prev``: the previous step's prediction), a few element-wise ops after the engine, so
    the same static engine serves every sampler and the loop stays one CUDA graph."""

    timesteps: torch.Tensor  # (S,) int64, e.g. 999, 974, ..., 24 for 40 steps
    a: torch.Tensor  # (S,) fp32 coefficient of x_t in the engine's output
    b: torch.Tensor  # (S,) fp32 coefficient of the v-prediction in the engine's output
    alphas_cumprod: torch.Tensor  # (T,) fp32 training schedule after the zero-SNR rescale
    mix: torch.Tensor | None = None  # (S, 3) fp32; None: the engine's output is x_prev
    name: str = "ddim"


def _zero_snr_alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so the last step has zero SNR (Lin et al. 2023), in fp32 like diffusers."""
    abar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    # diffusers returns betas = 1 - alphas and the scheduler takes alphas = 1 - betas again: the
    # round trip rounds in fp32 (up to 1e-7 relative near t = T), so it is kept, bit for bit
    alphas = 1.0 - (1.0 - alphas)
    return torch.cumprod(alphas, dim=0)  # recomputed from the rescaled alphas, as diffusers


def ddim_schedule(
    steps: int = 40,
    train_steps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    zero_snr: bool = True,
) -> DDIMSchedule:
    """Timesteps and coefficients of Hallo2's sampler (official ddim_scheduler_kwargs).

    beta_schedule is "linear" (the official switch to scaled_linear happens after the scheduler
    is built and has no effect). The previous timestep is ``t - train_steps // steps`` (not the
    next listed timestep; they differ when ``steps`` does not divide 1000, docs/model.md §7), and
    the final step targets alpha_cumprod = 1.
    """
    if not 1 <= steps <= train_steps:
        raise OptionError(f"steps = {steps}: must be between 1 and {train_steps}")
    betas = torch.linspace(beta_start, beta_end, train_steps, dtype=torch.float32)
    abar = _zero_snr_alphas_cumprod(betas) if zero_snr else torch.cumprod(1.0 - betas, 0)
    # trailing spacing: round(arange(T, 0, -T/S)) - 1
    ts = torch.round(torch.arange(train_steps, 0, -train_steps / steps, dtype=torch.float64))
    timesteps = ts.to(torch.int64) - 1
    prev = timesteps - train_steps // steps
    a_t = abar[timesteps]
    a_p = torch.where(prev >= 0, abar[prev.clamp(min=0)], torch.ones(()))
    sa_t, s1_t, sa_p, s1_p = a_t.sqrt(), (1 - a_t).sqrt(), a_p.sqrt(), (1 - a_p).sqrt()
    # x0 = sa_t x - s1_t v ; eps = sa_t v + s1_t x ; x_prev = sa_p x0 + s1_p eps
    return DDIMSchedule(
        timesteps=timesteps,
        a=sa_p * sa_t + s1_p * s1_t,
        b=s1_p * sa_t - sa_p * s1_t,
        alphas_cumprod=abar,
    )


SAMPLERS = ("ddim", "dpmpp-2m")


@dataclass(frozen=True)
class Sampling:
    """How a run denoises: the sampler and its steps, guidance truncation and feature caching
    (docs/presets.md). The defaults are the official loop."""

    sampler: str = "ddim"  # one of SAMPLERS
    steps: int = 40
    guidance_steps: int | None = None  # both CFG halves for the first K steps; None: every step
    cache_interval: int = 1  # a full step every N steps, cached (cheap) steps between; 1: none

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise OptionError(f"--sampler {self.sampler}: must be one of {', '.join(SAMPLERS)}")
        if not 1 <= self.steps <= 1000:
            raise OptionError(f"--steps {self.steps}: must be between 1 and 1000")
        if self.guidance_steps is not None and not 0 <= self.guidance_steps <= self.steps:
            raise OptionError(
                f"--guidance-steps {self.guidance_steps}: must be between 0 (no guidance) and "
                f"--steps ({self.steps})"
            )
        if not 1 <= self.cache_interval <= self.steps:
            raise OptionError(
                f"--cache-interval {self.cache_interval}: must be between 1 (no cache) and "
                f"--steps ({self.steps})"
            )

    @property
    def guided(self) -> int:
        """How many steps run both CFG halves."""
        return self.steps if self.guidance_steps is None else self.guidance_steps

    def plan(self) -> tuple[str, ...]:
        """The step engine each step calls (``engines.spec.DENOISER_VARIANTS``).

        Guided steps come first, then the conditional-only ones. Within each of the two runs a
        full step comes every ``cache_interval`` steps, counted from the run's start (the first
        step after the switch is a full one: the cached feature of a guided step has both
        halves' rows), and the steps between are shallow. Without a cache a full step is the
        plain engine; with one it is the "deep" engine, which also keeps the feature."""
        n = self.cache_interval
        out = []
        for i in range(self.steps):
            guided = i < self.guided
            at = i if guided else i - self.guided  # position within its run
            base = "denoiser" if guided else "denoiser_cond"
            if n == 1:
                out.append("denoiser_step" if guided else "denoiser_cond")
            elif at % n == 0:
                out.append(f"{base}_deep")
            else:
                out.append(f"{base}_shallow")
        return tuple(out)

    def engines(self) -> tuple[str, ...]:
        """The step engines the plan calls, each once, in the plan's order."""
        return tuple(dict.fromkeys(self.plan()))

    def fields(self) -> dict[str, Any]:
        """The four knobs by name: RunConfig and BenchConfig take them under the same names."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        out = f"{self.sampler} {self.steps} steps"
        if self.guided < self.steps:
            out += f", guidance on the first {self.guided}"
        if self.cache_interval > 1:
            out += f", a full step every {self.cache_interval}"
        return out


# Speed presets: named sets of the knobs above, training-free. "faithful" is the official
# sampler and stays the default; the others meet the FLOP targets per generated frame (fast <=
# 1/4, turbo <= 1/8 of faithful; docs/presets.md has the counts). What they cost in quality is
# unknown until measured with the real weights (hallo2rt compare, bench --against faithful).
PRESETS = {
    "faithful": Sampling("ddim", 40),
    "fast": Sampling("dpmpp-2m", 12, guidance_steps=6),
    "turbo": Sampling("dpmpp-2m", 8, guidance_steps=4, cache_interval=2),
}


def schedule(sampler: str, steps: int) -> DDIMSchedule:
    """The step tables of ``sampler`` (``SAMPLERS``) for ``steps`` steps."""
    if sampler == "ddim":
        return ddim_schedule(steps)
    if sampler == "dpmpp-2m":
        return dpmpp_2m_schedule(steps)
    raise OptionError(f"--sampler {sampler}: must be one of {', '.join(SAMPLERS)}")


def dpmpp_2m_schedule(steps: int = 20, train_steps: int = 1000) -> DDIMSchedule:
    """DPM-Solver++ (2M, midpoint), as diffusers' ``DPMSolverMultistepScheduler`` runs it when
    configured like Hallo2's scheduler: linear betas rescaled to zero terminal SNR (then
    alpha_cumprod at t = T is set to 2**-24 so that the first sigma is finite), v-prediction,
    trailing spacing, final sigma 0. The first and the last step are first order (the last one
    lands on sigma 0: ``lower_order_final``), the others second order.

    With alpha_s = sqrt(abar_s), sigma_s = sqrt(1 - abar_s), lambda = log(alpha / sigma) and
    h = lambda_t - lambda_s: x0 prediction m = alpha_s x - sigma_s v (the engine's output);
    x_t = (sigma_t / sigma_s) x + k (1 + 1 / (2 r)) m - k / (2 r) m_prev with
    k = alpha_t (1 - exp(-h)) and r = h_prev / h (first order: x_t = (sigma_t / sigma_s) x + k m).
    """
    base = ddim_schedule(steps, train_steps)
    abar = base.alphas_cumprod.clone()
    abar[-1] = 2.0**-24
    # as diffusers: sigma = sqrt((1 - abar) / abar) and back to alpha, sigma, all in fp32
    sig = (((1 - abar) / abar) ** 0.5)[base.timesteps]
    sig = torch.cat([sig, torch.zeros(1)])  # the final sigma: zero
    alpha = 1 / (sig**2 + 1).sqrt()
    sigma = sig * alpha
    lam = torch.log(alpha) - torch.log(sigma)  # +inf at the final sigma 0
    mix = torch.zeros(steps, 3)
    for i in range(steps):
        h = lam[i + 1] - lam[i]
        k = alpha[i + 1] * (1 - torch.exp(-h))  # exp(-inf) = 0 on the last step
        mix[i, 0] = sigma[i + 1] / sigma[i]
        if i == 0 or i == steps - 1:  # first order
            mix[i, 1] = k
        else:
            r = (lam[i] - lam[i - 1]) / h
            mix[i, 1], mix[i, 2] = k * (1 + 0.5 / r), -k * 0.5 / r
    return DDIMSchedule(
        timesteps=base.timesteps,
        a=alpha[:-1].clone(),
        b=-sigma[:-1].clone(),
        alphas_cumprod=abar,
        mix=mix,
        name="dpmpp-2m",
    )


def cfg_combine(v: torch.Tensor, scale: float) -> torch.Tensor:
    """v (2, ...) = [uncond, cond] -> v_u + scale * (v_c - v_u), shape (1, ...)."""
    v_u, v_c = v[:1], v[1:]
    return v_u + scale * (v_c - v_u)
