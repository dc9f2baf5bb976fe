"""The per-clip step loop on the ``denoiser_step`` engine: eager launches, or one CUDA graph.

Per step only ``denoiser_step`` runs; its time step and DDIM coefficients are rows of device
tables built once, so the loop never synchronises with the host. On a GPU with a backend whose
launches can be captured (TensorRT, torch), the whole loop is captured once as a CUDA graph
(DESIGN.md: a runtime wrapper, not a backend feature): every input lives in a static buffer, the
clip's conditioning is copied in, the graph replays all steps, and the result is read out. Where
capture is not possible (CPU, ONNX Runtime, a failed capture) the same steps launch one by one;
``mode`` says which ran and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..engines.session import Session
from .sampler import DDIMSchedule

log = logging.getLogger(__name__)

CAPTURABLE = (
    "tensorrt",
    "torch",
)  # ORT has its own CUDA-graph option (hallo2rt build --cuda-graph)


class StepLoop:
    """``loop(conditioning, noise, on_step) -> latents`` for one clip."""

    def __init__(
        self,
        session: Session,
        schedule: DDIMSchedule,
        cfg_scale: float,
        cuda_graph: bool = True,
    ):
        self.session = session
        engine = session.engines["denoiser_step"]
        self.device = engine.device
        self.steps = len(schedule.timesteps)
        self.timesteps = schedule.timesteps.to(self.device)[:, None]  # (S, 1) int64
        coef = torch.stack([schedule.a, schedule.b], dim=1)  # (S, 2): x_prev = a x + b v
        self.coef = coef.to(self.device)
        self.cfg = torch.tensor([cfg_scale], device=self.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        if not cuda_graph:
            self.mode = "eager (CUDA graphs off)"
        elif self.device.type != "cuda":
            self.mode = "eager (CUDA graphs need a GPU)"
        elif engine.backend not in CAPTURABLE:
            self.mode = f"eager ({engine.backend} launches are not captured here)"
        else:
            self.mode = "cuda-graph"

    def _step(self, const: dict[str, torch.Tensor], x: torch.Tensor, i: int) -> torch.Tensor:
        out = self.session.run(
            "denoiser_step",
            **const,
            latents=x,
            timestep=self.timesteps[i],
            coef=self.coef[i],
            cfg_scale=self.cfg,
        )
        return out["next_latents"]

    def __call__(
        self,
        const: dict[str, torch.Tensor],
        noise: torch.Tensor,
        on_step: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Denoise one clip. const: every denoiser_step input but latents, timestep, coef and
        cfg_scale; noise: (1, 4, F, h, w). Returns the clean latents (a new tensor)."""
        if self.mode == "cuda-graph":
            try:
                return self._replay(const, noise, on_step)
            except Exception as exc:  # capture is best effort; the eager loop is the reference
                self.mode = f"eager (CUDA graph capture failed: {type(exc).__name__}: {exc})"
                self._graph = None
                log.warning("falling back to per-step launches: %s", self.mode)
        x = noise
        for i in range(self.steps):
            x = self._step(const, x, i).clone()  # the engine reuses its output buffer
            if on_step is not None:
                on_step(i)
        return x

    def _replay(self, const, noise, on_step) -> torch.Tensor:
        if self._graph is None:
            self._capture(const, noise)
        for name, value in const.items():
            self._static[name].copy_(value)
        self._x.copy_(noise)
        self._graph.replay()
        if on_step is not None:
            for i in range(self.steps):
                on_step(i)
        return self._x.clone()

    def _capture(self, const, noise) -> None:
        self._static = {k: v.detach().clone() for k, v in const.items()}
        self._x = noise.detach().clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside the capture (allocations, autotuning)
            self._step(self._static, self._x, 0)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(self.steps):
                self._x.copy_(self._step(self._static, self._x, i))
        self._graph = graph
        log.info("captured the %d-step loop as one CUDA graph", self.steps)
