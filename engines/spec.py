"""EngineSpec: the one description of an engine's inputs and outputs (docs/style.md §1).

ONNX export, parity checks, (later) TensorRT profiles, buffer allocation and feed validation all
read it; nothing restates an engine's I/O elsewhere. Dims are ints, or symbol names with a
(min, opt, max) range in ``profiles`` where the work is truly variable.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .errors import FeedError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}

# Engines that stay fp32 in an fp16 build, as in the official code: wav2vec (cheap), CodeFormer
# (its top-1 codebook lookup turns small roundings into other codes) and the RetinaFace detector
# (half=False officially; cheap, and its box exponentials and thresholds are range-sensitive).
FP32_ONLY = ("audio_encoder", "face_restorer", "face_detector")

# docs/architecture.md's engine table, in its order (export, build and the doctor list engines
# this way).
ENGINE_NAMES = (
    "audio_encoder",
    "audio_proj",
    "image_proj",
    "face_locator",
    "vae_encoder",
    "reference_unet",
    "denoiser_step",
    "vae_decoder",
    "face_restorer",
    "bg_upsampler",
    "face_detector",
    "face_parser",
)
# the engines of --upscale (docs/model.md §2.8); the others make the 512^2 video
SUPER_RESOLUTION = ("face_detector", "face_restorer", "bg_upsampler", "face_parser")
GENERATION = tuple(n for n in ENGINE_NAMES if n not in SUPER_RESOLUTION)

# The denoiser's step engines (docs/presets.md): name -> (halves, part). halves: 2 = both CFG
# halves, 1 = the conditional half alone (guidance truncation); part: "full" step, "deep" (a full
# step that also outputs the feature a cheap step resumes from) or "shallow" (that cheap step,
# taking the feature). denoiser_step is the faithful engine; the others serve the speed presets,
# exported and built only on request (--only), and a run opens those its step plan calls.
DENOISER_VARIANTS = {
    "denoiser_step": (2, "full"),
    "denoiser_cond": (1, "full"),
    "denoiser_deep": (2, "deep"),
    "denoiser_shallow": (2, "shallow"),
    "denoiser_cond_deep": (1, "deep"),
    "denoiser_cond_shallow": (1, "shallow"),
}
SPEED_ENGINES = tuple(n for n in DENOISER_VARIANTS if n != "denoiser_step")
KNOWN_ENGINES = ENGINE_NAMES + SPEED_ENGINES  # what export and build accept
# The feature-cache branch of the deep/shallow engines: the shallow step recomputes the first
# CACHE_BRANCH layers of the top down block and the last CACHE_BRANCH + 1 of the top up block.
# Chosen by the FLOPs counted at full size (docs/presets.md, benchmarks/flops.py).
CACHE_BRANCH = 0


def run_engines(
    generation: bool = True, upscale: bool = False, steps: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The engines a run opens: a generation's, super-resolution's, or both; ``steps``: the
    speed engines its step plan calls besides (``runtime.plan.StepPlan.engines``)."""
    extra = tuple(n for n in steps if n in SPEED_ENGINES) if generation else ()
    return (GENERATION if generation else ()) + extra + (SUPER_RESOLUTION if upscale else ())


@dataclass(frozen=True)
class TensorSpec:
    name: str  # graph input/output name
    dtype: str  # "float32" | "float16" | "int64"
    dims: tuple[int | str, ...]  # ints, or symbols defined in the engine's profiles
    values: tuple[float, float] | None = None  # valid range of a float input (None: unbounded)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"TensorSpec {self.name}: dtype {self.dtype!r} not in {list(DTYPES)}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}
        if self.values is not None:
            out["values"] = list(self.values)
        return out

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape with each symbol replaced by ``sizes[symbol]``."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.dims)


@dataclass(frozen=True)
class EngineSpec:
    name: str  # one of docs/architecture.md's engine names
    inputs: tuple[TensorSpec, ...]  # in graph order
    outputs: tuple[TensorSpec, ...]  # in graph order
    profiles: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # symbol: min/opt/max
    notes: str = ""  # what runs where, precision pins and why
    tolerances: dict[str, float] = field(default_factory=dict)  # output prefix: looser rel tol
    fp32: tuple[str, ...] = ()  # float tensors that stay fp32 in an fp16 engine (notes say why)

    def tolerance(self, output: str, default: float) -> float:
        """The parity tolerance of ``output``: the default unless the spec says why not."""
        looser = [v for k, v in self.tolerances.items() if output.startswith(k)]
        return max([default, *looser])

    def __post_init__(self) -> None:
        used = {d for t in self.inputs + self.outputs for d in t.dims if isinstance(d, str)}
        missing = used - set(self.profiles)
        if missing:
            raise ValueError(f"EngineSpec {self.name}: symbols {sorted(missing)} have no profile")
        names = [t.name for t in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"EngineSpec {self.name}: duplicate tensor names")

    def sizes(self, which: str = "opt") -> dict[str, int]:
        """Symbol sizes at the profile's min, opt or max."""
        idx = {"min": 0, "opt": 1, "max": 2}[which]
        return {k: v[idx] for k, v in self.profiles.items()}

    def validate_feed(self, feed: dict[str, torch.Tensor]) -> None:
        """Names, dtypes and shapes of ``feed`` against the inputs; one error lists them all."""
        problems = []
        expected = {t.name: t for t in self.inputs}
        for name in expected.keys() - feed.keys():
            problems.append(f"missing input {name!r}")
        for name in feed.keys() - expected.keys():
            problems.append(f"unexpected input {name!r}")
        bound: dict[str, int] = {}
        for name in expected.keys() & feed.keys():
            spec, value = expected[name], feed[name]
            if value.dtype != DTYPES[spec.dtype]:
                problems.append(f"{name}: dtype {value.dtype} != {spec.dtype}")
            if value.dim() != len(spec.dims):
                problems.append(f"{name}: rank {value.dim()} != {len(spec.dims)}")
                continue
            for axis, (want, got) in enumerate(zip(spec.dims, value.shape, strict=True)):
                if isinstance(want, int) and want != got:
                    problems.append(f"{name}: dim {axis} is {got}, expected {want}")
                elif isinstance(want, str):
                    lo, _, hi = self.profiles[want]
                    if not lo <= got <= hi or bound.setdefault(want, got) != got:
                        problems.append(
                            f"{name}: dim {axis} ({want}) is {got}, expected "
                            f"{bound.get(want, f'{lo}..{hi}')}"
                        )
        if problems:
            raise FeedError(f"bad feed for engine {self.name}: " + "; ".join(sorted(problems)))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "profiles": {k: list(v) for k, v in self.profiles.items()},
            "notes": self.notes,
            "tolerances": self.tolerances,
            # only where used, so that the digests of the other specs do not change
            **({"fp32": list(self.fp32)} if self.fp32 else {}),
        }

    def with_precision(self, precision: str) -> EngineSpec:
        """The same engine with its float tensors in fp16 ("fp16") or fp32 ("fp32")."""
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision {precision!r}: expected fp32 or fp16")
        want = "float16" if precision == "fp16" else "float32"

        def cast(t: TensorSpec) -> TensorSpec:
            if t.dtype not in ("float32", "float16") or t.name in self.fp32:
                return t
            return replace(t, dtype=want)

        return replace(
            self, inputs=tuple(map(cast, self.inputs)), outputs=tuple(map(cast, self.outputs))
        )

    def digest(self) -> str:
        """Stable hash of the spec (cache keys)."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def spec_from_json(data: dict[str, Any]) -> EngineSpec:
    """Inverse of ``EngineSpec.to_json`` (manifests carry the spec they were built from)."""

    def tensors(key: str) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(
                t["name"],
                t["dtype"],
                tuple(t["dims"]),
                tuple(t["values"]) if t.get("values") is not None else None,
            )
            for t in data[key]
        )

    return EngineSpec(
        data["name"],
        tensors("inputs"),
        tensors("outputs"),
        {k: tuple(v) for k, v in data.get("profiles", {}).items()},
        data.get("notes", ""),
        dict(data.get("tolerances", {})),
        tuple(data.get("fp32", ())),
    )


def random_feed(
    spec: EngineSpec,
    sizes: dict[str, int],
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Valid inputs for ``spec`` at ``sizes``: floats uniform in the spec's ``values`` range
    (pixels, masks, weights), else ~ N(0, 1); integers (time steps) in [0, 1000)."""
    g = torch.Generator().manual_seed(seed)
    feed = {}
    for t in spec.inputs:
        shape = t.shape(sizes)
        if t.dtype == "int64":
            value = torch.randint(0, 1000, shape, generator=g)
        elif t.values is not None:
            lo, hi = t.values
            value = (lo + (hi - lo) * torch.rand(shape, generator=g)).to(DTYPES[t.dtype])
        else:
            value = torch.randn(shape, generator=g).to(DTYPES[t.dtype])
        feed[t.name] = value.to(device)
    return feed
