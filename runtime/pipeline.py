"""The clip loop: a portrait and driving audio -> 16-frame clips (docs/model.md §1.5-1.8).

Work happens at the frequency the math needs (docs/model.md §6): image tokens, the face-locator
feature (one frame, broadcast), the reference latent, its ReferenceNet rows and their keys/values
once per video; per clip the two motion frames (pixel mask, VAE encode), their ReferenceNet rows
(4 instead of the official 6) and the audio tokens' cross-attention keys/values; per step only
``denoiser_step``. Frames leave as each clip finishes, so memory does not grow with the audio
length.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engines.bank import (
    MASK_KINDS,
    mask_name,
    motion_name,
    reference_feature_name,
    reference_kv_names,
    reference_token_rows,
)
from ..engines.errors import OptionError
from ..engines.manifest import EngineError
from ..engines.spec import SUPER_RESOLUTION
from .audio import (
    SAMPLE_RATE,
    AudioStream,
    StreamedFeatures,
    TensorFeatures,
    audio_features,
    load_audio,
    resample,
)
from .media import MediaError, check_output
from .portrait import Box, Portrait, build_portrait, load_image
from .sampler import SAMPLERS, Sampling, schedule
from .session import Session
from .sr import SuperResolver
from .sr_remote import PipelinedSuperResolver
from .steploop import step_loop
from .video import ClipWriter, VideoWriter, host_frames

log = logging.getLogger(__name__)

MASK_SEED_OFFSET = 1_000_003  # default RNG: the pixel mask gets its own stream
VOCALS_RATE = 44100  # MDX-Net runs on 44.1 kHz stereo


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


@dataclass(frozen=True)
class RunConfig:
    """What a user tunes per run (defaults: the official long.yaml)."""

    steps: int = 40  # denoising steps
    sampler: str = "ddim"  # runtime.sampler.SAMPLERS; ddim is the official sampler
    guidance_steps: int | None = None  # both CFG halves on the first K steps; None: on all
    cache_interval: int = 1  # a full step every N steps, cached steps between; 1: no cache
    cfg_scale: float = 3.5  # classifier-free guidance scale
    seed: int = 42  # same seed, same video (on the same backend)
    pose_weight: float = 1.0  # motion_scale[0]: background/pose audio branch
    face_weight: float = 1.0  # motion_scale[1]: face audio branch
    lip_weight: float = 1.0  # motion_scale[2]: lip audio branch
    frames: int = 16  # frames per clip
    motion_frames: int = 2  # previous frames conditioning each clip (the model's M)
    mask_rate: float = 0.25  # chance of dropping a motion-frame pixel outside the face
    official_rng: bool = False  # one CPU generator: rand(mask) then fp16 randn(noise) per clip
    fps: int = 25  # output frame rate (the audio features are made for 25)
    size: int = 512  # generated frame side in px (a multiple of 64; engines: their own)
    face_expand_ratio: float = 1.2  # face rectangle expansion about its centre (official)
    cuda_graph: bool = True  # replay the step loop as one CUDA graph where it can be captured
    keep_partial: bool = False  # on an error or interrupt keep the clips made so far
    upscale: int = 1  # 1, 2 or 4: super-resolution of every clip to that many times the size
    fidelity: float = 0.5  # CodeFormer's w with upscale: 0 favours quality, 1 the input face

    def __post_init__(self) -> None:
        checks = (  # (option, its value, valid, the valid range in words)
            ("--steps", self.steps, 1 <= self.steps <= 1000, "1..1000"),
            ("--sampler", self.sampler, self.sampler in SAMPLERS, " or ".join(SAMPLERS)),
            (
                "--cfg",
                self.cfg_scale,
                _finite(self.cfg_scale) and self.cfg_scale >= 0,
                "a finite number >= 0",
            ),
            ("--frames", self.frames, self.frames >= self.motion_frames, self._frames_rule),
            (
                "--size",
                self.size,
                self.size > 0 and self.size % 64 == 0,
                "a positive multiple of 64",
            ),
            (
                "--face-expand-ratio",
                self.face_expand_ratio,
                _finite(self.face_expand_ratio) and self.face_expand_ratio > 0,
                "> 0",
            ),
            ("--upscale", self.upscale, self.upscale in (1, 2, 4), "1, 2 or 4"),
            ("--fidelity", self.fidelity, 0.0 <= self.fidelity <= 1.0, "0..1"),
            ("--pose/face/lip-weight", self.weights, _finite(*self.weights), "finite numbers"),
            ("RunConfig.motion_frames", self.motion_frames, self.motion_frames >= 1, ">= 1"),
            ("RunConfig.fps", self.fps, self.fps == 25, "25 (the audio features' rate)"),
            ("RunConfig.mask_rate", self.mask_rate, 0.0 <= self.mask_rate <= 1.0, "0..1"),
        )
        for option, value, ok, rule in checks:
            if not ok:
                raise OptionError(f"{option} {value}: must be {rule}")
        # the guidance and cache knobs against the steps (raises OptionError)
        Sampling(self.sampler, self.steps, self.guidance_steps, self.cache_interval)

    @property
    def sampling(self) -> Sampling:
        """The sampler, its steps and its speed knobs (their step plan)."""
        return Sampling(self.sampler, self.steps, self.guidance_steps, self.cache_interval)

    @property
    def weights(self) -> tuple[float, float, float]:
        """motion_scale: the pose, face and lip audio branches' weights."""
        return (self.pose_weight, self.face_weight, self.lip_weight)

    @property
    def _frames_rule(self) -> str:
        return f"at least {self.motion_frames} (each clip hands its last frames to the next)"


@dataclass(frozen=True)
class Clip:
    index: int  # clip number, from 0
    pixels: torch.Tensor  # (F, 3, S, S) in [-1, 1] on the session's device (a copy)
    ready: Any = None  # CUDA event recorded after the decode (None on the CPU)

    @property
    def frames(self) -> np.ndarray:
        """(F, S, S, 3) uint8 RGB on the host."""
        return host_frames(self.pixels, self.ready)


@dataclass(frozen=True)
class Progress:
    """Where a run stands; handed to the ``progress`` callback after every step."""

    clip: int  # clips finished
    clips: int  # clips in the video
    steps_done: int  # denoiser steps finished over the whole run
    steps_total: int  # clips x steps
    elapsed: float  # seconds since the clip loop started
    frames_per_clip: int = 16

    @property
    def frames_done(self) -> float:
        """Frames generated so far, counting a partly denoised clip pro rata."""
        return self.steps_done / max(self.steps_total, 1) * self.clips * self.frames_per_clip

    @property
    def fps(self) -> float:
        return self.frames_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the rate so far (nan before the first step)."""
        if self.steps_done == 0:
            return float("nan")
        return self.elapsed / self.steps_done * (self.steps_total - self.steps_done)


def _generators(cfg: RunConfig) -> tuple[torch.Generator, torch.Generator]:
    """(mask, noise) generators on the CPU; one shared generator under ``official_rng``."""
    noise = torch.Generator().manual_seed(cfg.seed)
    if cfg.official_rng:
        return noise, noise
    return torch.Generator().manual_seed(cfg.seed + MASK_SEED_OFFSET), noise


def _check_shapes(session: Session, portrait: Portrait, cfg: RunConfig) -> None:
    problems = []
    if cfg.frames != session.frames:
        problems.append(f"{cfg.frames} frames per clip (the engines take {session.frames})")
    if cfg.motion_frames != session.motion_frames:
        problems.append(f"{cfg.motion_frames} motion frames (engines: {session.motion_frames})")
    if portrait.pixels.shape[-1] != session.size:
        problems.append(f"{portrait.pixels.shape[-1]} px (the engines take {session.size})")
    if problems:
        raise MediaError(
            "this run does not fit the engines: " + "; ".join(problems) + ". Export and "
            "build engines for these shapes (hallo2rt export --size/--frames), or change the run"
        )


def _per_video(
    session: Session, portrait: Portrait, cfg: RunConfig
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """What stays constant over a video: the denoiser_step inputs (image K/V, face feature,
    reference K/V, masks, motion_scale), the image tokens (2, T, C) [uncond, cond] and the
    portrait's pixels (1, 3, S, S) on the session's device."""
    run, dev = session.run, session.device
    image = {k: v.clone() for k, v in run("image_proj", embedding=portrait.embedding).items()}
    tokens = image.pop("image_tokens")  # the rest: their cross-attention K/V per block
    face = run("face_locator", face_region=portrait.face_region)["face_feature"].clone()
    pixels = portrait.pixels.to(dev)
    ref_latent = run("vae_encoder", pixels=pixels)["latents"]  # (1, 4, h, w)
    ref_rows, _ = reference_token_rows(cfg.motion_frames)
    ref = run("reference_unet", latents=ref_latent.expand(2, -1, -1, -1), tokens=tokens[ref_rows])
    const = {
        **image,
        "face_feature": face,
        "motion_scale": torch.tensor(cfg.weights),
    }
    for i in range(session.hooked):  # reference K/V of every hooked block
        const.update({n: ref[n].clone() for n in reference_kv_names(i)})
    masks = (portrait.full_masks, portrait.face_masks, portrait.lip_masks)
    for kind, per_level in zip(MASK_KINDS, masks, strict=True):
        const.update({mask_name(kind, lv): x for lv, x in enumerate(per_level)})
    return {k: v.to(dev) for k, v in const.items()}, tokens, pixels


def _per_clip(
    session: Session, tokens: torch.Tensor, motion: torch.Tensor, window: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The denoiser_step inputs of one clip: the motion frames' ReferenceNet features per block
    and the audio cross-attention K/V. motion: (M, 3, S, S) masked motion frames; window:
    (1, F, 5, layers, C) audio feature windows."""
    run, m = session.run, motion.shape[0]
    _, motion_rows = reference_token_rows(m)
    latents = run("vae_encoder", pixels=motion)["latents"]  # (M, 4, h, w)
    rows = run(
        "reference_unet",
        latents=latents.repeat(2, 1, 1, 1),  # [m1..mM] per CFG half
        tokens=tokens[motion_rows],
    )
    clip = {}
    for i in range(session.hooked):  # (2M, L, C) -> (2, M, L, C) per block
        feat = rows[reference_feature_name(i)]
        clip[motion_name(i)] = feat.reshape(2, m, *feat.shape[1:]).clone()
    audio_kv = run("audio_proj", windows=window)
    clip.update({k: v.clone() for k, v in audio_kv.items()})
    return clip


def _decode(session: Session, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean latents (1, 4, F, h, w) -> the clip's pixels (F, 3, S, S) in [-1, 1] (a copy) and
    the next clip's motion frames (M, 3, S, S), through the official [0, 1] round trip."""
    pixels = session.run("vae_decoder", latents=x[0].transpose(0, 1))["pixels"]
    motion = (pixels[-m:].float() / 2 + 0.5).clamp(0, 1) * 2 - 1
    return pixels.clone(), motion  # the engine reuses its output buffer


def _ready(pixels: torch.Tensor):
    """A CUDA event recorded after the work that made ``pixels`` (None on the CPU)."""
    if pixels.device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def generate(
    session: Session,
    portrait: Portrait,
    features: torch.Tensor | TensorFeatures | StreamedFeatures,
    cfg: RunConfig,
    on_step: Callable[[], None] | None = None,
) -> Iterator[Clip]:
    """Yield clips of ``cfg.frames`` frames until every audio frame is covered.

    features: (N, layers, C) per-frame audio features (``audio_features``), or a source of
    clip windows (``StreamedFeatures``: computed segment by segment). The official loop makes
    ``N // F`` clips and drops the tail; here a last clip covers it, its missing windows
    repeating the final one, so earlier clips are exactly the official ones.
    """
    if isinstance(features, torch.Tensor):
        features = TensorFeatures(features)
    _check_shapes(session, portrait, cfg)
    f, m, size = cfg.frames, cfg.motion_frames, portrait.pixels.shape[-1]
    const, tokens, pixels = _per_video(session, portrait, cfg)
    loop = step_loop(
        session,
        schedule(cfg.sampler, cfg.steps),
        cfg.cfg_scale,
        cfg.cuda_graph,
        cfg.sampling.plan(),
    )
    keep_face = portrait.face_region[0, 0].bool()  # (S, S)
    mask_gen, noise_gen = _generators(cfg)
    noise_dtype = torch.float16 if cfg.official_rng else torch.float32
    motion = pixels.expand(m, -1, -1, -1)  # clip 0: the portrait itself (not zeros)
    step = (lambda _i: on_step()) if on_step else None
    for t in range(math.ceil(features.frames / f)):
        # the official order: the pixel mask, then the noise (docs/model.md §1.12)
        keep = (torch.rand(size, size, generator=mask_gen) > cfg.mask_rate) | keep_face
        noise = torch.randn((1, 4, f, size // 8, size // 8), generator=noise_gen, dtype=noise_dtype)
        window = features.windows(t * f, f)[None]  # (1, F, 5, layers, C)
        clip = {**const, **_per_clip(session, tokens, motion * keep.to(motion.device), window)}
        x = loop(clip, noise.to(session.device), step)
        out, motion = _decode(session, x, m)
        yield Clip(t, out, _ready(out))
    log.info("step loop: %s", loop.mode)


def _audio(session: Session, audio, cfg: RunConfig, separate):
    """The audio features (streamed, or of the separated voice) and the audio to mux."""

    def encode(x: torch.Tensor, n: int) -> torch.Tensor:
        _check_audio_range(session, x.shape[-1])
        feats = session.run("audio_encoder", waveform=x)["features"]  # (1, ceil(S/640), L, C)
        if feats.shape[1] != n:
            raise RuntimeError(f"audio_encoder gave {feats.shape[1]} frames for {n}")
        return feats.float().cpu()

    if separate is None:  # streamed: memory does not grow with the audio's length
        features = StreamedFeatures(audio, encode, cfg.frames)  # a first pass checks the file
        return features, AudioStream(audio)  # muxed as it goes
    # the separator needs the whole stereo track (official --separate-vocals path)
    samples, rate = load_audio(audio, sample_rate=None, mono=False)
    stereo = resample(samples, rate, VOCALS_RATE, mono=False)
    vocals = separate(np.repeat(stereo, 2, axis=0) if stereo.shape[0] == 1 else stereo)
    wave16 = resample(vocals, VOCALS_RATE, 16000, mono=True)
    return TensorFeatures(*audio_features(wave16[0], encode, cfg.frames)), (samples, rate)


def _check_audio_range(session: Session, samples: int) -> None:
    """A segment (padded to whole clips) outside the audio encoder's range, as a MediaError:
    engines exported before short audio was supported take at least one whole clip."""
    lo, _, hi = session.spec("audio_encoder").profiles.get("samples", (samples, 0, samples))
    if lo <= samples <= hi:
        return
    seconds, least = samples / SAMPLE_RATE, lo / SAMPLE_RATE
    if samples < lo:
        raise MediaError(
            f"the driving audio is too short for these engines ({seconds:.2f} s after padding; "
            f"their audio_encoder takes at least {least:.2f} s): use longer audio, or export "
            "and build the audio_encoder again with this version, which takes any length"
        )
    raise MediaError(
        f"an audio segment of {seconds:.1f} s exceeds the audio_encoder's {hi / SAMPLE_RATE:.1f}"
        " s: export it again with a larger max_audio_samples"
    )


def _super_resolver(
    session: Session, cfg: RunConfig, restorer=None
) -> SuperResolver | PipelinedSuperResolver | None:
    if cfg.upscale == 1:
        return None
    if restorer is not None:  # on another worker, pipelined with the generation
        return PipelinedSuperResolver(restorer, cfg.size, cfg.size, cfg.upscale, cfg.fidelity)
    if not session.upscales:
        raise EngineError(
            f"--upscale {cfg.upscale} needs the super-resolution engines "
            f"{list(SUPER_RESOLUTION)} in the session: export and build them too (they are part "
            "of a full export)"
        )
    return SuperResolver(session, cfg.size, cfg.size, cfg.upscale, cfg.fidelity)  # no work yet


def _progress(
    progress: Callable[[Progress], None] | None, n_clips: int, cfg: RunConfig
) -> Callable[[], None]:
    """The per-step callback: counts steps and hands ``progress`` a Progress."""
    total, done, start = n_clips * cfg.steps, [0], time.perf_counter()

    def on_step() -> None:
        done[0] += 1
        if progress:
            elapsed = time.perf_counter() - start
            clip = done[0] // cfg.steps
            progress(Progress(clip, n_clips, done[0], total, elapsed, frames_per_clip=cfg.frames))

    return on_step


def _stream_clips(clips: Iterator[Clip], sink: ClipWriter, sr, audio_length: int) -> None:
    """Hand every clip to the writer, through super-resolution when ``sr``."""
    sent = 0
    for clip in clips:
        if sr is None:
            sink.put(clip.pixels, clip.ready)
            continue
        pixels = clip.pixels[: audio_length - sent]  # no SR for frames cut anyway
        sent += pixels.shape[0]
        for frames in sr.push(pixels):
            sink.put(frames)
    for frames in sr.flush() if sr is not None else ():
        sink.put(frames)
    if sr is not None and sr.frames_without_face:
        log.warning(
            "super-resolution: %d of %d frames had no face detected and reused the previous "
            "frame's landmarks",
            sr.frames_without_face,
            sr.frames_out,
        )


def generate_video(
    session: Session,
    image: str | Path,
    audio: str | Path,
    out: str | Path,
    face_box: Box,
    embedding: np.ndarray,
    cfg: RunConfig = RunConfig(),
    lip_box: Box | None = None,
    progress: Callable[[Progress], None] | None = None,
    separate: Callable[[np.ndarray], np.ndarray] | None = None,
    restorer=None,
) -> Path:
    """Portrait + driving audio -> MP4 at ``out`` with the audio muxed. Inputs are all read and
    checked before the output is opened; the file appears only when complete
    (``cfg.keep_partial``: on an error or interrupt, the clips finished so far are kept as a
    playable file). ``separate`` ((2, n) 44.1 kHz -> vocals) isolates the voice before the audio
    features are computed. ``cfg.upscale`` 2 or 4 streams every clip through face restoration
    (CodeFormer ``cfg.fidelity``) and background upsampling (``runtime.sr``); the session must
    then hold the super-resolution engines, unless ``restorer`` (``runtime.sr_remote``) restores
    the windows elsewhere while the next clips are made. ``session`` must be open
    (``with session:``)."""
    check_output(out, image=image, audio=audio)  # never replace an input with the video
    if np.size(embedding) != session.embedding_dim:
        raise MediaError(
            f"the face embedding has {np.size(embedding)} values; this model "
            f"expects {session.embedding_dim} (the raw ArcFace embedding)"
        )
    rgb = load_image(image)
    portrait = build_portrait(rgb, cfg.size, face_box, embedding, lip_box, cfg.face_expand_ratio)
    _check_shapes(session, portrait, cfg)  # before any model work
    sr = _super_resolver(session, cfg, restorer)
    try:
        return _generate_video(session, portrait, audio, out, cfg, progress, separate, sr)
    finally:
        if sr is not None:
            sr.close()


def _generate_video(
    session: Session,
    portrait: Portrait,
    audio: str | Path,
    out: str | Path,
    cfg: RunConfig,
    progress: Callable[[Progress], None] | None,
    separate: Callable[[np.ndarray], np.ndarray] | None,
    sr: SuperResolver | PipelinedSuperResolver | None,
) -> Path:
    """``generate_video`` once its inputs are checked and its super-resolver made."""
    features, native = _audio(session, audio, cfg, separate)
    start = time.perf_counter()
    n_clips = math.ceil(features.frames / cfg.frames)
    on_step = _progress(progress, n_clips, cfg)
    if progress:  # before the per-video work and the first clip, which take a while
        progress(Progress(0, n_clips, 0, n_clips * cfg.steps, 0.0, frames_per_clip=cfg.frames))
    try:
        side, frames = cfg.size * cfg.upscale, features.audio_length
        writer = VideoWriter(out, side, side, cfg.fps, audio=native, max_frames=frames)
        sink = ClipWriter(writer)  # converts and encodes while the next clip denoises
        try:
            _stream_clips(generate(session, portrait, features, cfg, on_step), sink, sr, frames)
        except BaseException:
            if cfg.keep_partial and sink.clips_put:
                sink.close(trim_audio=True)  # what was generated, audio cut with the video
                log.warning("stopped: kept the first %d frames in %s", writer.frames_written, out)
            else:
                sink.abort()
            raise
        sink.close()
    finally:
        if isinstance(native, AudioStream):
            native.close()
    log.info("%d frames in %.1f s", features.audio_length, time.perf_counter() - start)
    return Path(out)
