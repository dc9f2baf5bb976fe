"""One pure export wrapper and one EngineSpec per engine (docs/architecture.md, "Engines";
docs/style.md §1-2).

Each wrapper takes the spec's inputs positionally and returns the spec's outputs as a tuple: no
dicts, no hooks, no state. ``build_graph(name, pretrained, shapes)`` returns the wrapper, its spec
and a maker of valid random inputs (export example and parity feed).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..engines.bank import (
    AUDIO_BRANCHES,
    MASK_KINDS,
    audio_kv_names,
    denoiser_input_names,
    image_kv_names,
    mask_name,
    motion_name,
    reference_feature_name,
    reference_kv_names,
)
from ..engines.errors import OptionError
from ..engines.spec import (
    CACHE_BRANCH,
    DENOISER_VARIANTS,
    KNOWN_ENGINES,
    EngineSpec,
    TensorSpec,
)
from .checkpoints import Pretrained
from .modules.layers import round_to_fp16

SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps


@dataclass(frozen=True)
class GraphShapes:
    """What fixes engine shapes at export (part of the build's cache key)."""

    size: int = 512  # image side (latents are size / 8)
    frames: int = 16  # frames per clip
    motion_frames: int = 2  # M
    sr_frames: int = 16  # temporal window of the face restorer (official chunk)
    sr_overlap: int = 4  # frames a window shares with the previous one (official overlay)
    detect_size: int = 640  # face detector input side (official: the short side scaled to 640)
    face_size: int = 512  # aligned face crop side (CodeFormer's input; facelib: 512)
    max_audio_samples: int = 969_600  # a 60 s segment plus the last segment's padding

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size % 64:
            raise OptionError(f"--size {self.size}: must be a positive multiple of 64")
        if self.frames < self.motion_frames:
            raise OptionError(
                f"--frames {self.frames}: must be at least {self.motion_frames} (each clip "
                "hands its last frames to the next)"
            )
        if not 0 < self.sr_overlap < self.sr_frames:
            raise OptionError(
                f"GraphShapes.sr_overlap = {self.sr_overlap}: must lie in 1..sr_frames - 1 "
                f"({self.sr_frames - 1})"
            )


@dataclass
class Graph:
    spec: EngineSpec
    module: nn.Module  # forward(*inputs) -> tuple(outputs), in spec order
    make_inputs: Callable[[dict[str, int], torch.Generator], tuple[torch.Tensor, ...]]


def _t(
    name: str,
    *dims: int | str,
    dtype: str = "float32",
    values: tuple[float, float] | None = None,
) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(dims), values)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g)


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=g)


class _Call(nn.Module):
    """Wrap a module whose forward already is a pure tensor function of one input."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.inner(x),)


class AudioEncoderGraph(nn.Module):
    """Normalised 16 kHz audio (1, S) -> features (1, ceil(S / 640), layers, C)."""

    def __init__(self, w2v: nn.Module):
        super().__init__()
        self.w2v = w2v

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor]:
        s = waveform.shape[-1]
        frames = (s + SAMPLES_PER_FRAME - 1) // SAMPLES_PER_FRAME  # official ceil(S / 16000 * 25)
        feats = self.w2v.feature_extractor(waveform)
        feats = F.interpolate(feats, size=frames, mode="linear", align_corners=True)
        return (self.w2v.encoder(self.w2v.feature_projection(feats.transpose(1, 2))),)


class ImageProjGraph(nn.Module):
    """Embedding (1, E) -> tokens (2, T, C) = [image_proj(0), image_proj(embedding)] and, per
    hooked denoiser block, the keys and values of its image cross-attention over them (2, T, C_i):
    constant over the video, so ``denoiser_step`` does not project them (docs/model.md §6.5)."""

    def __init__(self, proj: nn.Module, denoiser: nn.Module):
        super().__init__()
        self.proj = proj
        self.attn2 = nn.ModuleList(
            [denoiser.get_submodule(b).transformer_blocks[0].attn2 for b in denoiser.hooked_blocks]
        )

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = self.proj(torch.cat([torch.zeros_like(embedding), embedding]))
        outs = [tokens]
        for attn in self.attn2:
            outs += list(attn.project_kv(tokens))
        return tuple(outs)


class AudioProjGraph(nn.Module):
    """Windows (1, F, 5, layers, C) -> per hooked block, the keys and values of its three audio
    cross-attentions over the rows [zeros (uncond) x F, audio_proj(windows) x F], each
    (2F, Ta, D_i): constant over the clip's steps (docs/model.md §6.6)."""

    def __init__(self, proj: nn.Module, denoiser: nn.Module):
        super().__init__()
        self.proj = proj
        self.attns = nn.ModuleList(
            [nn.ModuleList(denoiser.audio_attentions(b)) for b in denoiser.hooked_blocks]
        )

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        audio = self.proj(windows)  # (1, F, Ta, A)
        rows = torch.cat([torch.zeros_like(audio), audio]).reshape(-1, *audio.shape[2:])
        outs: list[torch.Tensor] = []
        for branches in self.attns:
            for attn in branches:
                outs += list(attn.project_kv(rows))  # (2F, Ta, D) each
        return tuple(outs)


class ReferenceGraph(nn.Module):
    """ReferenceNet rows -> per hooked block: keys and values (projected with the denoiser's
    attn1 of that block, on the fp16-rounded features) and the features themselves.

    Per video the runtime feeds the two reference rows and keeps K/V; per clip the 2M motion
    rows and keeps the features. Nothing after the last hooked norm1 is in the graph.
    """

    def __init__(self, reference: nn.Module, denoiser: nn.Module):
        super().__init__()
        self.reference = reference
        self.attn1 = nn.ModuleList(
            [denoiser.get_submodule(n).transformer_blocks[0].attn1 for n in denoiser.hooked_blocks]
        )

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the reference runs at t = 0; the step lives on the latents' device (a CPU tensor here
        # meets CUDA weights in the time embedding)
        t0 = torch.zeros((), dtype=torch.int64, device=latents.device)
        bank = self.reference(latents, t0, tokens)
        outs: list[torch.Tensor] = []
        for feat, attn in zip(bank, self.attn1, strict=True):
            k, v = attn.project_kv(round_to_fp16(feat))
            outs += [k, v, feat]
        return tuple(outs)


class DenoiserStepGraph(nn.Module):
    """One sampler step: both CFG halves, CFG combine, DDIM update (x_prev = a x + b v).

    Inputs after cfg_scale, per hooked block i: image K/V, audio K/V of the 3 branches, then the
    face feature, reference K/V, motion features, masks per level and motion_scale (the spec's
    order).

    The speed variants (``engines.spec.DENOISER_VARIANTS``) take the same tensors, so the step
    loop feeds every variant from one set of buffers: ``halves`` 1 runs the conditional half
    alone (no cfg_scale input; it reads the conditional rows of the K/V and motion inputs), a
    "deep" step also outputs ``deep_feature``, a "shallow" step takes it as its last input and
    runs only the top layers (``Denoiser.run_shallow``, branch ``CACHE_BRANCH``)."""

    def __init__(
        self,
        denoiser: nn.Module,
        levels: int,
        blocks: int,
        halves: int = 2,
        part: str = "full",
        branch: int = CACHE_BRANCH,
    ):
        super().__init__()
        self.denoiser, self.levels, self.blocks = denoiser, levels, blocks
        self.halves, self.part, self.branch = halves, part, branch
        names = denoiser_input_names(blocks, levels)  # the spec's inputs, in its order
        if halves == 1:
            names = tuple(n for n in names if n != "cfg_scale")
        if part == "shallow":  # only what its layers read (an exporter drops unused inputs)
            keep = _shallow_inputs(denoiser, levels, blocks, branch)
            names = tuple(n for n in names if n in keep) + ("deep_feature",)
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = dict(zip(self.names, inputs, strict=True))  # by spec name, not by position
        blocks, levels = range(self.blocks), range(self.levels)
        latents = x["latents"]
        f = latents.shape[2]
        cond = self.halves == 1  # per-half inputs: keep the conditional rows only
        half = slice(1, 2) if cond else slice(0, 2)
        rows = slice(f, 2 * f) if cond else slice(0, 2 * f)

        # a shallow step has only the inputs of the layers it runs: None for the others
        def pair(names: tuple[str, str], pick: slice) -> tuple[torch.Tensor, torch.Tensor] | None:
            return (x[names[0]][pick], x[names[1]][pick]) if names[0] in x else None

        image_kv = [pair(image_kv_names(i), half) for i in blocks]
        audio_kv = [
            None
            if audio_kv_names(i, 0)[0] not in x
            else [pair(audio_kv_names(i, b), rows) for b in range(AUDIO_BRANCHES)]
            for i in blocks
        ]
        face = x["face_feature"]
        if not cond:
            face = torch.cat([torch.zeros_like(face), face])
        masks = [[x.get(mask_name(kind, lv)) for lv in levels] for kind in MASK_KINDS]
        out = self.denoiser(
            latents if cond else torch.cat([latents, latents]),
            x["timestep"],
            None,
            None,
            face[:, :, None],  # (halves, C0, 1, h, w)
            [pair(reference_kv_names(i), slice(0, 2)) for i in blocks],
            [x[motion_name(i)][half] if motion_name(i) in x else None for i in blocks],
            *masks,
            x["motion_scale"],
            token_kv=(image_kv, audio_kv),
            branch=self.branch if self.part != "full" else -1,
            cached=x["deep_feature"] if self.part == "shallow" else None,
        )
        v, kept = out if self.part == "deep" else (out, None)
        if not cond:
            v = v[:1] + x["cfg_scale"].to(v.dtype) * (v[1:] - v[:1])
        # coef is fp32 in every engine (spec: fp32); a no-op cast in fp32 engines
        coef = x["coef"]
        step = (coef[0] * latents.float() + coef[1] * v.float()).to(latents.dtype)
        return (step,) if kept is None else (step, kept)


def fit_shapes(shapes: GraphShapes, pre: Pretrained) -> GraphShapes:
    """``shapes`` with the face crop side of the loaded CodeFormer (when it is loaded)."""
    if pre.config.codeformer is None:
        return shapes
    return dataclasses.replace(shapes, face_size=pre.config.codeformer.img_size)


def build_graph(name: str, pre: Pretrained, shapes: GraphShapes = GraphShapes()) -> Graph:
    """The wrapper, spec and input maker of engine ``name`` from loaded components."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown engine {name!r}; known: {', '.join(KNOWN_ENGINES)}")
    return _BUILDERS[name](pre, shapes)


def _audio_encoder(pre: Pretrained, s: GraphShapes) -> Graph:
    w = pre.config.wav2vec
    # The shortest segment is a last one of one sample, padded to one clip: (F - 1) * 640 + 1
    # samples (runtime.audio.plan_segments); wav2vec2's 400-sample receptive field fits in it.
    lo, hi = (s.frames - 1) * SAMPLES_PER_FRAME + 1, s.max_audio_samples
    spec = EngineSpec(
        "audio_encoder",
        (_t("waveform", 1, "samples"),),
        (_t("features", 1, "audio_frames", w.num_hidden_layers, w.hidden_size),),
        {
            "samples": (lo, 960_000 if hi >= 960_000 else hi, hi),
            "audio_frames": (
                s.frames,
                -(-min(960_000, hi) // SAMPLES_PER_FRAME),
                -(-hi // SAMPLES_PER_FRAME),
            ),
        },
        "wav2vec2 on one official 60 s segment, normalised outside; all layers out; fp32.",
    )
    return Graph(
        spec, AudioEncoderGraph(pre["audio_encoder"]), lambda z, g: (_randn(g, 1, z["samples"]),)
    )


def _token_kv_specs(den: nn.Module, frames: int, cfg) -> tuple[list, list]:
    """Specs of the cached cross-attention K/V: image (2, T, C_i) and audio (2F, Ta, D_ib)."""
    h = cfg.heads
    image, audio = [], []
    for i, b in enumerate(den.hooked_blocks):
        width = den.get_submodule(b).transformer_blocks[0].attn2.to_k.out_features
        image += [_t(n, 2, h.image_tokens, width) for n in image_kv_names(i)]
        for j, attn in enumerate(den.audio_attentions(b)):
            d = attn.to_k.out_features
            audio += [_t(n, 2 * frames, h.audio_tokens, d) for n in audio_kv_names(i, j)]
    return image, audio


def _audio_proj(pre: Pretrained, s: GraphShapes) -> Graph:
    h = pre.config.heads
    _, audio = _token_kv_specs(pre["denoiser"], s.frames, pre.config)
    spec = EngineSpec(
        "audio_proj",
        (_t("windows", 1, s.frames, h.audio_window, h.audio_blocks, h.audio_channels),),
        tuple(audio),
        notes="per clip: audio tokens, then the keys/values of every audio cross-attention "
        "(branch j = full, face, lip) over [uncond zeros x F, cond x F]; the first GEMM "
        "(K = window x layers x width) accumulates in fp32.",
    )
    return Graph(
        spec,
        AudioProjGraph(pre["audio_proj"], pre["denoiser"]),
        lambda z, g: (_randn(g, 1, s.frames, h.audio_window, h.audio_blocks, h.audio_channels),),
    )


def _image_proj(pre: Pretrained, s: GraphShapes) -> Graph:
    h = pre.config.heads
    image, _ = _token_kv_specs(pre["denoiser"], s.frames, pre.config)
    spec = EngineSpec(
        "image_proj",
        (_t("embedding", 1, h.image_embed_dim),),
        (_t("image_tokens", 2, h.image_tokens, h.token_dim), *image),
        notes="per video; row 0 is image_proj(0), the official uncond tokens; then the image "
        "cross-attention keys/values of every hooked denoiser block.",
    )
    return Graph(
        spec,
        ImageProjGraph(pre["image_proj"], pre["denoiser"]),
        lambda z, g: (_randn(g, 1, h.image_embed_dim) * 10,),
    )


def _face_locator(pre: Pretrained, s: GraphShapes) -> Graph:
    c0, lat = pre.config.heads.face_locator_out, s.size // 8
    spec = EngineSpec(
        "face_locator",
        (_t("face_region", 1, 3, s.size, s.size, values=(0.0, 1.0)),),
        (_t("face_feature", 1, c0, lat, lat),),
        notes="per video, one frame (the official runs 16 identical frames).",
    )
    return Graph(
        spec,
        _Call(pre["face_locator"]),
        lambda z, g: (
            (_rand(g, 1, 1, s.size, s.size) > 0.5).float().expand(1, 3, -1, -1).contiguous(),
        ),
    )


def _vae_encoder(pre: Pretrained, s: GraphShapes) -> Graph:
    lat = s.size // 8
    spec = EngineSpec(
        "vae_encoder",
        (_t("pixels", "images", 3, s.size, s.size, values=(-1.0, 1.0)),),
        (_t("latents", "images", 4, lat, lat),),
        {"images": (1, s.motion_frames, s.motion_frames + 1)},
        "latent mean x 0.18215; per video the portrait, per clip the motion frames.",
    )
    return Graph(
        spec,
        _Call(pre["vae_encoder"]),
        lambda z, g: (_rand(g, z["images"], 3, s.size, s.size) * 2 - 1,),
    )


def _vae_decoder(pre: Pretrained, s: GraphShapes) -> Graph:
    lat = s.size // 8
    spec = EngineSpec(
        "vae_decoder",
        (_t("latents", s.frames, 4, lat, lat),),
        (_t("pixels", s.frames, 3, s.size, s.size),),
        notes="a whole clip in one batch (the official decodes frame by frame).",
    )
    return Graph(spec, _Call(pre["vae_decoder"]), lambda z, g: (_randn(g, s.frames, 4, lat, lat),))


def _reference_unet(pre: Pretrained, s: GraphShapes) -> Graph:
    den, lat, h = pre["denoiser"], s.size // 8, pre.config.heads
    outs = []
    for i, (length, ch) in enumerate(den.hooked_shapes((lat, lat))):
        outs += [
            *(_t(n, "rows", length, ch) for n in reference_kv_names(i)),
            _t(reference_feature_name(i), "rows", length, ch),
        ]
    rows = 2 * s.motion_frames
    spec = EngineSpec(
        "reference_unet",
        (_t("latents", "rows", 4, lat, lat), _t("tokens", "rows", h.image_tokens, h.token_dim)),
        tuple(outs),
        {"rows": (2, rows, rows)},
        "t = 0; per video 2 reference rows (keep K/V), per clip 2M motion rows (keep features); "
        "tokens per row follow the official tiling (engines.bank.reference_token_rows). K/V "
        "project the fp16-rounded features (docs/model.md §7): a 1e-6 feature difference can flip "
        "an element's fp16 rounding by one ulp (~5e-4 relative), hence their looser tolerance.",
        tolerances={"ref_k_": 1e-3, "ref_v_": 1e-3},
    )
    return Graph(
        spec,
        ReferenceGraph(pre["reference_unet"], den),
        lambda z, g: (
            _randn(g, z["rows"], 4, lat, lat),
            _randn(g, z["rows"], h.image_tokens, h.token_dim),
        ),
    )


def _shallow_inputs(den: nn.Module, levels: int, blocks: int, branch: int) -> set[str]:
    """The denoiser_step inputs a shallow step at ``branch`` reads (``Denoiser.run_shallow``):
    those of the first ``branch`` hooked blocks (the top down block's, if it has attention) and
    of the last ``branch`` + 1 (the top up block's), the level-0 masks and the shared ones."""
    b, cfg = branch, den.cfg
    used = set(range(b) if cfg.down_has_attn[0] else ())
    used |= set(range(blocks - (b + 1), blocks)) if cfg.up_has_attn[-1] else set()
    unused = set()
    for i in set(range(blocks)) - used:
        unused |= {*image_kv_names(i), *reference_kv_names(i), motion_name(i)}
        unused |= {n for j in range(AUDIO_BRANCHES) for n in audio_kv_names(i, j)}
    unused |= {mask_name(k, lv) for k in MASK_KINDS for lv in range(1, levels)}
    return set(denoiser_input_names(blocks, levels)) - unused


def _denoiser_step(pre: Pretrained, s: GraphShapes, name: str = "denoiser_step") -> Graph:
    den, cfg = pre["denoiser"], pre.config
    halves, part = DENOISER_VARIANTS[name]
    lat, f, m, h = s.size // 8, s.frames, s.motion_frames, cfg.heads
    hooked = den.hooked_shapes((lat, lat))
    levels = len(cfg.unet.block_out_channels)
    image_kv, audio_kv = _token_kv_specs(den, f, cfg)
    ins = [
        _t("latents", 1, 4, f, lat, lat),
        _t("timestep", 1, dtype="int64"),
        _t("coef", 2),
        _t("cfg_scale", 1, values=(1.0, 5.0)),
        *image_kv,
        *audio_kv,
        _t("face_feature", 1, h.face_locator_out, lat, lat),
    ]
    for i, (length, ch) in enumerate(hooked):
        ins += [_t(n, 2, length, ch) for n in reference_kv_names(i)]
    ins += [_t(motion_name(i), 2, m, length, ch) for i, (length, ch) in enumerate(hooked)]
    for kind in MASK_KINDS:
        ins += [
            _t(mask_name(kind, lv), 1, (lat >> lv) ** 2, values=(0.0, 1.0)) for lv in range(levels)
        ]
    ins.append(_t("motion_scale", 3, values=(0.5, 1.5)))
    if halves == 1:
        ins = [t for t in ins if t.name != "cfg_scale"]
    module = DenoiserStepGraph(den, levels, len(hooked), halves, part)
    outs = [_t("next_latents", 1, 4, f, lat, lat)]
    feature = _t("deep_feature", *den.cached_feature_shape(CACHE_BRANCH, halves * f, lat))
    if part == "deep":
        outs.append(feature)
    if part == "shallow":
        ins = [t for t in ins if t.name in module.names] + [feature]
    notes = (
        "both CFG halves (uncond: no reference, zero audio and face), CFG combine"
        if halves == 2
        else "the conditional half alone (guidance truncation: no CFG combine; it reads the "
        "conditional rows of the per-half inputs)"
    )
    notes += (
        ", DDIM x_prev = coef[0] x + coef[1] v. coef and cfg_scale stay fp32 in fp16 "
        "engines and the DDIM update is computed in fp32 (the official scheduler's "
        "coefficients are fp32 scalars; fp16 would round them to 2^-11)."
    )
    if part != "full":
        notes += f" Feature cache at branch {CACHE_BRANCH}: " + (
            "also outputs deep_feature, the input of the top up block's layer a cheap step "
            "resumes at."
            if part == "deep"
            else "runs only the top layers, resuming from a deep step's deep_feature."
        )
    spec = EngineSpec(
        name,
        tuple(ins),
        tuple(outs),
        notes=notes,
        fp32=("coef", "cfg_scale") if halves == 2 else ("coef",),
    )

    def make(z, g):
        vals = []
        for t in ins:
            if t.name == "timestep":
                vals.append(torch.tensor([500]))
            elif t.name == "coef":
                vals.append(torch.tensor([0.9, -0.1]))
            elif t.name == "cfg_scale":
                vals.append(torch.tensor([3.5]))
            elif t.name == "motion_scale":
                vals.append(torch.tensor([1.0, 0.9, 1.1]))
            else:  # latents, K/V, features ~ N(0, 1); masks (a value range) in [0, 1)
                vals.append((_randn if t.values is None else _rand)(g, *t.dims))
        return tuple(vals)

    return Graph(spec, module, make)


class FaceRestorerGraph(nn.Module):
    """One streamed window of the temporal CodeFormer (``CodeFormer.window``)."""

    def __init__(self, codeformer: nn.Module):
        super().__init__()
        self.net = codeformer

    def forward(self, faces, context, context_valid, fidelity) -> tuple[torch.Tensor, ...]:
        return self.net.window(faces, context, context_valid, fidelity)


class FaceDetectorGraph(nn.Module):
    """RGB in [0, 1] -> facelib's BGR - mean input; the anchors decoded in the graph (a
    constant table for the static input size), so the runtime reads pixels directly."""

    def __init__(self, retinaface: nn.Module, size: int):
        super().__init__()
        self.net, self.size = retinaface, size
        self.register_buffer("priors", retinaface.priors(size, size), persistent=False)
        mean = torch.tensor([104.0, 117.0, 123.0]).reshape(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = image.flip(1) * 255.0 - self.mean  # RGB [0, 1] -> BGR [0, 255] - mean
        loc, conf, landm = self.net(x)
        boxes, points = self.net.decode(loc, landm, self.priors)
        return boxes * self.size, conf[..., 1], points * self.size


def _face_detector(pre: Pretrained, s: GraphShapes) -> Graph:
    d = s.detect_size
    graph = FaceDetectorGraph(pre["face_detector"], d)
    anchors = graph.priors.shape[0]
    spec = EngineSpec(
        "face_detector",
        (_t("image", 1, 3, d, d, values=(0.0, 1.0)),),
        (
            _t("boxes", 1, anchors, 4),
            _t("scores", 1, anchors),
            _t("landmarks", 1, anchors, 10),
        ),
        notes="RetinaFace-R50 on one frame resized to the input side; boxes and 5 landmarks "
        "(x, y) in input pixels per anchor, face score per anchor; selection outside.",
    )
    return Graph(spec, graph, lambda z, g: (_rand(g, 1, 3, d, d),))


def _face_restorer(pre: Pretrained, s: GraphShapes) -> Graph:
    cf = pre.config.codeformer
    side, lat, c = cf.img_size, cf.attn_resolution, s.sr_overlap
    if side != s.face_size:
        raise OptionError(
            f"this CodeFormer restores {side}x{side} crops but GraphShapes.face_size is "
            f"{s.face_size}: export with face_size={side}"
        )
    spec = EngineSpec(
        "face_restorer",
        (
            _t("faces", "sr_new", 3, side, side, values=(-1.0, 1.0)),
            _t("context", c, cf.emb_dim, lat, lat),
            _t("context_valid", c, values=(0.0, 1.0)),
            _t("fidelity", 1, values=(0.0, 1.0)),
        ),
        (
            _t("restored", "sr_new", 3, side, side),
            _t("features", "sr_new", cf.emb_dim, lat, lat),
        ),
        {"sr_new": (1, s.sr_frames - c, s.sr_frames)},
        "temporal CodeFormer on one window: the new aligned crops plus the encoder features "
        "of the frames shared with the previous window (context_valid > 0.5: real frames).",
    )

    def make(z, g):
        return (
            _rand(g, z["sr_new"], 3, side, side) * 2 - 1,
            _randn(g, c, cf.emb_dim, lat, lat),
            (torch.arange(c) % 2).float(),  # half the context real: the mask is exercised
            torch.tensor([0.5]),
        )

    return Graph(spec, FaceRestorerGraph(pre["face_restorer"]), make)


def _bg_upsampler(pre: Pretrained, s: GraphShapes) -> Graph:
    k = pre.config.rrdb.scale
    face = s.face_size
    lo, hi = min(s.size, face), max(s.size, face)  # frames and (face upsampling) face crops
    spec = EngineSpec(
        "bg_upsampler",
        (_t("image", 1, 3, "height", "width", values=(0.0, 1.0)),),
        (_t("upscaled", 1, 3, "up_height", "up_width"),),
        {
            "height": (lo, face, hi),
            "width": (lo, face, hi),
            "up_height": (lo * k, face * k, hi * k),
            "up_width": (lo * k, face * k, hi * k),
        },
        notes="RealESRGAN untiled, on whole frames and on restored face crops.",
    )
    return Graph(
        spec,
        _Call(pre["bg_upsampler"]),
        lambda z, g: (_rand(g, 1, 3, z["height"], z["width"]),),
    )


class FaceParserGraph(nn.Module):
    def __init__(self, parsenet: nn.Module):
        super().__init__()
        self.net = parsenet

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.net(face),)


def _face_parser(pre: Pretrained, s: GraphShapes) -> Graph:
    p, side = pre.config.parsenet, s.face_size
    spec = EngineSpec(
        "face_parser",
        (_t("face", 1, 3, side, side, values=(-1.0, 1.0)),),
        (_t("parsing", 1, p.parsing_ch, side, side),),
        notes="ParseNet logits of a restored face crop; argmax and blur outside.",
    )
    return Graph(
        spec,
        FaceParserGraph(pre["face_parser"]),
        lambda z, g: (_rand(g, 1, 3, side, side) * 2 - 1,),
    )


_BUILDERS = {
    "audio_encoder": _audio_encoder,
    "audio_proj": _audio_proj,
    "image_proj": _image_proj,
    "face_locator": _face_locator,
    "vae_encoder": _vae_encoder,
    "vae_decoder": _vae_decoder,
    "reference_unet": _reference_unet,
    **{name: functools.partial(_denoiser_step, name=name) for name in DENOISER_VARIANTS},
    "face_restorer": _face_restorer,
    "bg_upsampler": _bg_upsampler,
    "face_detector": _face_detector,
    "face_parser": _face_parser,
}

# Components each engine needs from the checkpoint tree.
ENGINE_COMPONENTS = {
    "audio_encoder": ("audio_encoder",),
    "audio_proj": ("audio_proj", "denoiser"),  # + the audio cross-attentions' K/V weights
    "image_proj": ("image_proj", "denoiser"),  # + the image cross-attentions' K/V weights
    "face_locator": ("face_locator",),
    "vae_encoder": ("vae_encoder",),
    "vae_decoder": ("vae_decoder",),
    "reference_unet": ("reference_unet", "denoiser"),
    # + audio_proj: the audio token count of the step's inputs is read with it (HeadsConfig);
    # without it an export of the denoiser alone assumed the release's 32 tokens
    **{name: ("denoiser", "audio_proj") for name in DENOISER_VARIANTS},
    "face_restorer": ("face_restorer",),
    "bg_upsampler": ("bg_upsampler",),
    "face_detector": ("face_detector",),
    "face_parser": ("face_parser",),
}
