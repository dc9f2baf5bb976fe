"""The sampler against diffusers' DDIMScheduler configured as the official code (dev only)."""

from __future__ import annotations

import pytest
import torch

from hallo2rt.runtime.sampler import cfg_combine, ddim_schedule

diffusers = pytest.importorskip("diffusers")

OFFICIAL = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    clip_sample=False,
    steps_offset=1,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
)


@pytest.mark.parametrize("steps", [40, 3, 7])
def test_schedule_and_step_equal_diffusers(steps):
    ref = diffusers.DDIMScheduler(**OFFICIAL)
    ref.set_timesteps(steps)
    ours = ddim_schedule(steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 8, 8, generator=g)
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(x.shape, generator=g)
        want = ref.step(v, t, x, eta=0.0).prev_sample
        got = ours.a[i] * x + ours.b[i] * v
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        x = want


def test_forty_steps_are_the_official_trailing_timesteps():
    s = ddim_schedule(40)
    assert s.timesteps[:3].tolist() == [999, 974, 949] and s.timesteps[-1].item() == 24
    assert s.alphas_cumprod[999].item() == 0.0  # zero terminal SNR
    # at zero SNR x0 = -v: the first step is x_prev = sqrt(1 - abar_974) x - sqrt(abar_974) v
    abar = s.alphas_cumprod[974]
    assert s.a[0].item() == pytest.approx((1 - abar).sqrt().item(), rel=1e-6)
    assert s.b[0].item() == pytest.approx(-abar.sqrt().item(), rel=1e-6)
    assert s.alphas_cumprod[974].item() == pytest.approx(4.43e-5, rel=1e-2)
    assert s.alphas_cumprod[24].item() == pytest.approx(0.9747, rel=1e-3)


def test_cfg_combine_is_the_guidance_formula():
    torch.testing.assert_close(
        cfg_combine(torch.tensor([[1.0], [3.0]]), 2.0), torch.tensor([[5.0]])
    )


def test_bad_step_count():
    with pytest.raises(ValueError, match="steps = 0"):
        ddim_schedule(0)


DPM = dict(  # DPMSolverMultistepScheduler configured like the official scheduler
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    algorithm_type="dpmsolver++",
    solver_order=2,
    solver_type="midpoint",
    final_sigmas_type="zero",
)


def _model(x: torch.Tensor, t: int, g_noise: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for the guided v-prediction, different at every step."""
    return torch.tanh(0.7 * x) + (t / 1000.0) * g_noise


@pytest.mark.parametrize("steps", [20, 10, 5, 3, 1])
def test_dpmpp_2m_equals_diffusers_on_the_same_model_outputs(steps):
    """The engine computes m = a x + b v (the x0 prediction); the loop mixes it with x and the
    previous m. Step for step this equals diffusers' DPM-Solver++(2M) on the same outputs."""
    from hallo2rt.runtime.sampler import dpmpp_2m_schedule

    ref = diffusers.DPMSolverMultistepScheduler(**DPM)
    ref.set_timesteps(steps)
    ours = dpmpp_2m_schedule(steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 8, 8, generator=g) * ref.init_noise_sigma
    extra = torch.randn(x.shape, generator=g)
    got, m_prev = x.clone(), torch.zeros_like(x)
    for i, t in enumerate(ref.timesteps):
        want = ref.step(_model(x, int(t), extra), t, x).prev_sample
        m = ours.a[i] * got + ours.b[i] * _model(got, int(t), extra)
        mix = ours.mix[i]
        got, m_prev = mix[0] * got + mix[1] * m + mix[2] * m_prev, m
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        x = want


def test_sampler_names():
    from hallo2rt.runtime.sampler import SAMPLERS, schedule

    assert schedule("ddim", 7).mix is None and schedule("dpmpp-2m", 7).mix.shape == (7, 3)
    assert SAMPLERS == ("ddim", "dpmpp-2m")
    with pytest.raises(ValueError, match="--sampler euler: must be one of ddim, dpmpp-2m"):
        schedule("euler", 5)


def test_step_plans_of_the_presets_and_the_knobs():
    """Guided steps first, then conditional-only ones; within each run a full (deep) step every
    N steps from the run's start, shallow steps between; faithful calls denoiser_step only."""
    from hallo2rt.runtime.sampler import PRESETS, Sampling

    assert PRESETS["faithful"] == Sampling() and set(Sampling().plan()) == {"denoiser_step"}
    assert PRESETS["fast"].plan() == ("denoiser_step",) * 6 + ("denoiser_cond",) * 6
    assert PRESETS["turbo"].plan() == (
        "denoiser_deep",
        "denoiser_shallow",
        "denoiser_deep",
        "denoiser_shallow",
        "denoiser_cond_deep",
        "denoiser_cond_shallow",
        "denoiser_cond_deep",
        "denoiser_cond_shallow",
    )
    # a run of 3 guided steps with interval 2: the conditional run starts with a full step
    plan = Sampling("ddim", 7, guidance_steps=3, cache_interval=2).plan()
    assert plan == (
        "denoiser_deep",
        "denoiser_shallow",
        "denoiser_deep",
        "denoiser_cond_deep",
        "denoiser_cond_shallow",
        "denoiser_cond_deep",
        "denoiser_cond_shallow",
    )
    assert Sampling("ddim", 4, guidance_steps=0).plan() == ("denoiser_cond",) * 4
    assert Sampling("ddim", 5, cache_interval=5).engines() == ("denoiser_deep", "denoiser_shallow")
    assert PRESETS["turbo"].describe() == (
        "dpmpp-2m 8 steps, guidance on the first 4, a full step every 2"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 4, "guidance_steps": 5}, "--guidance-steps 5: must be between 0"),
        ({"steps": 4, "guidance_steps": -1}, "--guidance-steps -1"),
        ({"steps": 4, "cache_interval": 0}, "--cache-interval 0: must be between 1"),
        ({"steps": 4, "cache_interval": 5}, "--cache-interval 5"),
        ({"sampler": "euler"}, "--sampler euler"),
    ],
)
def test_bad_speed_knobs_are_named(kwargs, message):
    from hallo2rt.engines.errors import OptionError
    from hallo2rt.runtime.sampler import Sampling

    with pytest.raises(OptionError, match=message):
        Sampling(**kwargs)
