"""The per-clip step loop on the ``denoiser_step`` engine: eager launches, or one CUDA graph.

Per step only ``denoiser_step`` runs (and, for a multistep sampler, three element-wise ops that
mix its output with the latents and the previous step's output). Its inputs live in buffers
the loop owns, allocated once per session in the engine's dtypes and 256-byte aligned
(TensorRT's documented requirement for ``set_tensor_address``; a row view of a table would sit
at 8 * i bytes): one buffer per step for the time step and the DDIM coefficients, one per
conditioning input (a clip's conditioning is copied in) and one for the latents, which each step
overwrites. So the loop never synchronises
with the host and every call sees the same addresses.

On a GPU with a backend whose launches can be captured (TensorRT, torch) and a static-shape
denoiser, the whole loop is captured once per session as a CUDA graph (docs/architecture.md: a
runtime wrapper, not a backend feature) and replayed for every clip. Before capturing, one step runs
under ``capture.capture_hazards`` on the capture stream (the warm-up TensorRT and torch want
anyway): code that cannot be captured is reported and the loop stays eager, with no capture
attempted. A capture that fails all the same is never retried on that device in this process
(a failed capture can leave CUDA and torch's allocator in a state a second one trips on), and
the current stream is restored whatever happens. ``mode`` says which loop runs and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..engines.manifest import EngineError
from ..engines.spec import DENOISER_VARIANTS, DTYPES
from .capture import capture_hazards
from .sampler import DDIMSchedule
from .session import Session

log = logging.getLogger(__name__)

CAPTURABLE = ("tensorrt", "torch")  # ORT has its own CUDA-graph option (build --cuda-graph)
ALIGN = 256  # bytes; TensorRT: "The pointer must have at least 256-byte alignment"
_FAILED_DEVICES: set[str] = set()  # devices where a capture failed in this process


def aligned_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor whose data starts on an ``ALIGN``-byte boundary, on any device
    (torch's CUDA allocator aligns to 512 already; its CPU allocator only to 64)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = max(1, int(torch.Size(shape).numel())) * itemsize
    raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8, device=device)
    skip = -raw.data_ptr() % ALIGN
    return raw[skip : skip + nbytes].view(dtype).view(shape)


def _aligned_copy(value: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = aligned_empty(tuple(value.shape), dtype, device)
    out.copy_(value)
    return out


def _part(name: str) -> str:
    """full, deep or shallow: what step engine ``name`` computes (DENOISER_VARIANTS)."""
    return DENOISER_VARIANTS.get(name, (2, "full"))[1]


def step_loop(
    session: Session,
    schedule: DDIMSchedule,
    cfg_scale: float,
    cuda_graph: bool = True,
    plan: tuple[str, ...] | None = None,
):
    """The session's loop for these settings: made once per session, so that a CUDA graph is
    captured once and reused by every later ``generate`` (and by timed benchmark runs).
    ``plan``: the step engine of each step (``sampler.Sampling.plan``; default: denoiser_step)."""
    plan = plan or ("denoiser_step",) * len(schedule.timesteps)
    timesteps = tuple(schedule.timesteps.tolist())
    key = ("step_loop", schedule.name, timesteps, cfg_scale, cuda_graph, plan)
    return session.cached(key, lambda: StepLoop(session, schedule, cfg_scale, cuda_graph, plan))


class StepLoop:
    """``loop(conditioning, noise, on_step) -> latents`` for one clip.

    A speed preset's plan calls other step engines (``engines.spec.DENOISER_VARIANTS``) on the
    same buffers: they take the same inputs (a conditional-only engine ignores cfg_scale), a
    "deep" engine's ``deep_feature`` is copied into a buffer the loop owns (one per CFG batch)
    and a "shallow" engine reads it there. So every plan is still one static sequence of
    launches, captured as one graph."""

    def __init__(
        self,
        session: Session,
        schedule: DDIMSchedule,
        cfg_scale: float,
        cuda_graph: bool = True,
        plan: tuple[str, ...] | None = None,
    ):
        self.session = session
        self.steps = len(schedule.timesteps)
        self.plan = plan or ("denoiser_step",) * self.steps
        if len(self.plan) != self.steps:
            raise ValueError(f"a plan of {len(self.plan)} steps for {self.steps} time steps")
        missing = [n for n in dict.fromkeys(self.plan) if n not in session.engines]
        if missing:
            raise EngineError(
                f"this run's steps call the engines {missing}, which the session does not "
                f"hold; export and build them (hallo2rt export --only {','.join(missing)}, "
                "then hallo2rt build) or choose another --preset"
            )
        self.engines = {n: session.engines[n] for n in dict.fromkeys(self.plan)}
        self.engine = session.engines["denoiser_step"]
        self.device = self.engine.device
        engines = [*self.engines.values(), self.engine]
        dtypes = {t.name: DTYPES[t.dtype] for e in engines for t in e.spec.inputs}
        self._dtypes = dtypes
        dev = self.device
        self.timesteps = [  # (1,) int64 each, one allocation per step
            _aligned_copy(t.reshape(1), dtypes["timestep"], dev) for t in schedule.timesteps
        ]
        self.coefs = [  # (2,) each: the engine returns a x + b v
            _aligned_copy(torch.stack([a, b]), dtypes["coef"], dev)
            for a, b in zip(schedule.a, schedule.b, strict=True)
        ]
        # multistep samplers: x_next = mix[0] x + mix[1] m + mix[2] m_prev after the engine
        # (sampler.DDIMSchedule); fp32 rows on the device, so the loop stays capturable
        self.mix = (
            None
            if schedule.mix is None
            else [_aligned_copy(row, torch.float32, dev) for row in schedule.mix]
        )
        self.cfg = _aligned_copy(torch.tensor([cfg_scale]), dtypes["cfg_scale"], dev)
        latents = next(t for t in self.engine.spec.inputs if t.name == "latents")
        self._x = aligned_empty(latents.shape({}), dtypes["latents"], dev)
        self._m = torch.zeros_like(self._x)  # the previous step's x0 prediction (multistep)
        self._features = {}  # deep engine name -> the buffer its shallow partner reads
        for n, e in self.engines.items():
            if _part(n) == "deep":
                feature = next(t for t in e.spec.outputs if t.name == "deep_feature")
                self._features[n] = aligned_empty(feature.shape({}), DTYPES[feature.dtype], dev)
        self._check_cache_order()
        self._static: dict[str, torch.Tensor] = {}
        self._graph: torch.cuda.CUDAGraph | None = None
        self.mode = self._initial_mode(cuda_graph)

    def _check_cache_order(self) -> None:
        """Each shallow step follows a deep step of the same CFG batch (its feature's rows)."""
        last: str | None = None
        for i, name in enumerate(self.plan):
            part = _part(name)
            if part == "deep":
                last = name
            elif part == "shallow" and last != name.replace("_shallow", "_deep"):
                raise ValueError(f"step {i} ({name}) has no deep step of its batch before it")

    def _initial_mode(self, cuda_graph: bool) -> str:
        if not cuda_graph:
            return "eager (CUDA graphs off)"
        if str(self.device) in _FAILED_DEVICES:
            return "eager (a CUDA graph capture failed earlier in this process)"
        if self.device.type != "cuda":
            return "eager (CUDA graphs need a GPU)"
        for engine in self.engines.values():
            if engine.backend not in CAPTURABLE:
                return f"eager ({engine.backend} launches are not captured here)"
            if engine.spec.profiles:
                return f"eager ({engine.spec.name} has dynamic shapes)"
        return "cuda-graph"

    def feeds(self, i: int) -> dict[str, torch.Tensor]:
        """Every input of step ``i``: the loop's own buffers (the addresses an engine sees)."""
        feed = {
            **self._static,
            "latents": self._x,
            "timestep": self.timesteps[i],
            "coef": self.coefs[i],
            "cfg_scale": self.cfg,
        }
        name = self.plan[i]
        if _part(name) == "shallow":
            feed["deep_feature"] = self._features[name.replace("_shallow", "_deep")]
        return feed

    def _step(self, i: int) -> None:
        name = self.plan[i]
        result = self.session.run(name, **self.feeds(i))
        if name in self._features:
            self._features[name].copy_(result["deep_feature"])
        out = result["next_latents"]
        if self.mix is None:
            self._x.copy_(out)  # the engine reuses its output buffer
            return
        c = self.mix[i]
        x = c[0] * self._x.float() + c[1] * out.float() + c[2] * self._m.float()
        self._m.copy_(out)
        self._x.copy_(x)

    def _steps(self, indices: list[int]) -> None:
        for i in indices:
            self._step(i)

    def _load(self, const: dict[str, torch.Tensor], noise: torch.Tensor) -> None:
        """Copy a clip's conditioning and noise into the loop's buffers (allocated once)."""
        if not self._static:
            self._static = {
                k: aligned_empty(tuple(v.shape), self._dtypes[k], self.device)
                for k, v in const.items()
            }
        for name, value in const.items():
            self._static[name].copy_(value)
        self._x.copy_(noise)
        self._m.zero_()  # unused by a first step, but never uninitialised memory (0 * nan)

    def __call__(
        self,
        const: dict[str, torch.Tensor],
        noise: torch.Tensor,
        on_step: Callable[[int], None] | None = None,
        eager: bool = False,
    ) -> torch.Tensor:
        """Denoise one clip. const: every denoiser_step input but the loop's own
        (``LOOP_INPUTS``); noise: (1, 4, F, h, w). Returns the clean latents (a new tensor).
        ``eager``: launch the steps one by one even where a graph is captured (comparisons)."""
        self._load(const, noise)
        if self.mode == "cuda-graph" and not eager:
            if self._graph is None:
                self._capture()
            graph = self._graph
            if graph is not None:
                graph.replay()
                if on_step is not None:
                    for i in range(self.steps):
                        on_step(i)
                return self._x.clone()
        for i in range(self.steps):
            self._step(i)
            if on_step is not None:
                on_step(i)
        return self._x.clone()

    def _capture(self) -> None:
        """Probe, warm up and capture the loop on a side stream; on any problem, stay eager."""
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        x0 = self._x.clone()
        try:
            with torch.cuda.stream(side):  # restores the current stream however this ends
                # warm-up (allocations, autotuning, TensorRT's first enqueue) and the probe,
                # one step on each engine of the plan
                firsts = [self.plan.index(n) for n in self.engines]
                hazards = capture_hazards(lambda: self._steps(firsts))
                if hazards:
                    self.mode = "eager (not capturable: " + "; ".join(hazards[:3]) + ")"
                    log.warning("CUDA graph not captured: %s", self.mode)
                    return
                side.synchronize()
                graph = torch.cuda.CUDAGraph()
                # thread_local: the writer thread's allocations and copies stay legal meanwhile
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    for i in range(self.steps):
                        self._step(i)
                finally:
                    graph.capture_end()
            self._graph = graph
            log.info("captured the %d-step loop as one CUDA graph", self.steps)
        except Exception as exc:  # the eager loop is the reference; never capture here again
            _FAILED_DEVICES.add(str(self.device))
            self.mode = f"eager (CUDA graph capture failed: {type(exc).__name__}: {exc})"
            log.warning("falling back to per-step launches: %s", self.mode)
        finally:
            main.wait_stream(side)
            self._x.copy_(x0)  # the warm-up step moved the latents; captured steps did not run
            self._m.zero_()
