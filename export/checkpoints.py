"""Strict loading of the official ``pretrained_models/`` layout (docs/model.md §3).

One table says which files each component reads (``COMPONENT_FILES``); one table per checkpoint
names every rename and reshape with the reason (docs/style.md §8). A run asks only for the
components it uses; every missing file is reported at once, before any weight is read, and a key
mismatch raises one error listing missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..engines.errors import Hallo2rtError, OptionError
from .config import (
    CodeFormerConfig,
    HeadsConfig,
    ModelConfig,
    MotionConfig,
    ParseNetConfig,
    RetinaFaceConfig,
    RRDBConfig,
    UNetConfig,
    VAEConfig,
    Wav2Vec2Config,
)
from .modules import COMPONENTS, build_module

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

# Paths inside pretrained_models/ and what each must contain (used in "missing file" errors).
NET = "hallo2/net.pth"
NET_G = "hallo2/net_g.pth"
UNET_CONFIG = "stable-diffusion-v1-5/unet/config.json"
VAE_DIR = "sd-vae-ft-mse"
WAV2VEC_DIR = "wav2vec/wav2vec2-base-960h"
REALESRGAN = "realesrgan/RealESRGAN_x2plus.pth"
FACE_DETECTOR = "facelib/detection_Resnet50_Final.pth"
FACE_PARSER = "facelib/parsing_parsenet.pth"
WEIGHT_NAMES = {  # directory checkpoints: the first file found is used
    VAE_DIR: (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.pth",
        "diffusion_pytorch_model.ckpt",
    ),
    WAV2VEC_DIR: ("model.safetensors", "pytorch_model.bin", "model.pth", "model.ckpt"),
}
CONTENTS = {
    NET: "the Hallo2 network (reference_unet., denoising_unet., face_locator., imageproj., "
    "audioproj. tensors) from the Hallo2 release",
    NET_G: "the temporal CodeFormer ({'params_ema': state_dict}) from the Hallo2 release",
    UNET_CONFIG: "the SD1.5 UNet config.json (architecture of both UNets)",
    f"{VAE_DIR}/config.json": "the sd-vae-ft-mse AutoencoderKL config.json",
    VAE_DIR: "the sd-vae-ft-mse weights (diffusion_pytorch_model.safetensors or .bin)",
    f"{WAV2VEC_DIR}/config.json": "the wav2vec2-base-960h config.json",
    WAV2VEC_DIR: "the wav2vec2-base-960h weights (model.safetensors or pytorch_model.bin)",
    REALESRGAN: "the RealESRGAN x2plus RRDBNet weights",
    FACE_DETECTOR: "the RetinaFace-ResNet50 face detector (facexlib release)",
    FACE_PARSER: "the ParseNet face parser (CodeFormer / facelib release)",
}
NET_COMPONENTS = {  # component -> its prefix in net.pth
    "reference_unet": "reference_unet",
    "denoiser": "denoising_unet",
    "face_locator": "face_locator",
    "image_proj": "imageproj",
    "audio_proj": "audioproj",
}
COMPONENT_FILES: dict[str, tuple[str, ...]] = {
    **{c: (NET, UNET_CONFIG) for c in NET_COMPONENTS},
    "audio_proj": (NET, UNET_CONFIG, f"{WAV2VEC_DIR}/config.json"),
    "vae_encoder": (f"{VAE_DIR}/config.json", VAE_DIR),
    "vae_decoder": (f"{VAE_DIR}/config.json", VAE_DIR),
    "audio_encoder": (f"{WAV2VEC_DIR}/config.json", WAV2VEC_DIR),
    "face_restorer": (NET_G,),
    "bg_upsampler": (REALESRGAN,),
    "face_detector": (FACE_DETECTOR,),
    "face_parser": (FACE_PARSER,),
}
GENERATION_COMPONENTS = (
    "vae_encoder",
    "vae_decoder",
    "reference_unet",
    "denoiser",
    "face_locator",
    "image_proj",
    "audio_proj",
    "audio_encoder",
)  # what --upscale 1 needs

# --- renames and reshapes, each with its reason --------------------------------------------------
# (pattern, replacement, why); applied in order with re.sub on every key.
VAE_RENAMES = [
    (
        r"^(.*mid_block\.attentions\.0)\.query\.",
        r"\1.to_q.",
        "legacy diffusers (<0.14) attention names; current names are to_q/to_k/to_v/to_out.0",
    ),
    (r"^(.*mid_block\.attentions\.0)\.key\.", r"\1.to_k.", "legacy attention name"),
    (r"^(.*mid_block\.attentions\.0)\.value\.", r"\1.to_v.", "legacy attention name"),
    (r"^(.*mid_block\.attentions\.0)\.proj_attn\.", r"\1.to_out.0.", "legacy attention name"),
]
WAV2VEC_RENAMES = [
    (r"^wav2vec2\.", "", "Wav2Vec2ForCTC wraps the model we need in 'wav2vec2.'"),
    (
        r"\.parametrizations\.weight\.original0$",
        ".weight_g",
        "torch>=2.1 parametrized weight norm: original0 is g",
    ),
    (
        r"\.parametrizations\.weight\.original1$",
        ".weight_v",
        "torch>=2.1 parametrized weight norm: original1 is v",
    ),
]
WAV2VEC_DROPS = [
    (r"^lm_head\.", "the CTC head; Hallo2 uses the hidden states"),
    (r"^masked_spec_embed$", "SpecAugment mask embedding; training only"),
]


class CheckpointError(Hallo2rtError, RuntimeError):
    """A checkpoint file is missing, unreadable or does not match the architecture."""


def _apply_renames(
    sd: StateDict, renames: Iterable[tuple[str, str, str]], drops: Iterable[tuple[str, str]] = ()
) -> StateDict:
    out = {}
    drops = list(drops)
    for key, value in sd.items():
        for pattern, repl, _why in renames:
            key = re.sub(pattern, repl, key)
        if not any(re.search(p, key) for p, _ in drops):  # drops match the renamed key
            out[key] = value
    return out


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """weight = g * v / ||v||, the norm taken over every axis except ``dim`` (weight_norm)."""
    axes = [a for a in range(v.dim()) if a != dim]
    return g * v / v.norm(dim=axes, keepdim=True)


def read_state_dict(path: Path, what: str = "") -> StateDict:
    """Read .safetensors / .pth / .ckpt / .bin with ``weights_only=True``; errors name the file."""
    if not path.is_file():
        raise CheckpointError(
            f"missing checkpoint file {path}" + (f": it should hold {what}" if what else "")
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix not in (".pth", ".ckpt", ".bin", ".pt"):
            raise CheckpointError(
                f"{path}: unsupported checkpoint format {path.suffix!r} "
                "(expected .safetensors, .pth, .ckpt or .bin)"
            )
        try:  # mmap keeps a 10 GB net.pth out of RAM until tensors are touched
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be mmapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt, truncated, or pickled objects refused by weights_only
        raise CheckpointError(
            f"{path} could not be read as a checkpoint ({type(exc).__name__}: "
            f"{exc}). The file is corrupt or incomplete: download it again"
        ) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def _unwrap(sd: StateDict, path: Path, keys: tuple[str, ...]) -> StateDict:
    """basicsr checkpoints nest the weights under 'params_ema' (preferred) or 'params'."""
    for k in keys:
        if k in sd and isinstance(sd[k], Mapping):
            return dict(sd[k])
    if all(isinstance(v, torch.Tensor) for v in sd.values()):
        return sd
    raise CheckpointError(
        f"{path}: no {' or '.join(repr(k) for k in keys)} entry; top-level "
        f"keys are {sorted(sd)[:5]}"
    )


def _summarise(keys: list[str], limit: int = 5) -> str:
    head = ", ".join(keys[:limit])
    return f"{len(keys)} ({head}{', ...' if len(keys) > limit else ''})"


def strict_load(
    module: nn.Module, sd: Mapping[str, torch.Tensor], what: str, dtype: torch.dtype | None = None
) -> nn.Module:
    """Assign ``sd`` to ``module`` (possibly on the meta device); raise one error listing every
    missing, unexpected and mis-shaped key."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in sd)
    unexpected = sorted(k for k in sd if k not in expected)
    shapes = sorted(
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shapes:
        parts = [f"{what} does not match the architecture built from its config:"]
        if missing:
            parts.append(f"  missing keys: {_summarise(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys: {_summarise(unexpected)}")
        if shapes:
            parts.append(f"  shape mismatches (file != model): {_summarise(shapes)}")
        parts.append(
            "  Check that the config.json files and the weights come from the same "
            "release, or re-download the checkpoint."
        )
        raise CheckpointError("\n".join(parts))
    cast = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
        for k, v in sd.items()
    }
    module.load_state_dict(cast, strict=True, assign=True)
    return module.requires_grad_(False).eval()


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"missing config file {path}: it should hold {what}")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}): re-download it") from exc


def _weights_file(root: Path, directory: str) -> Path | None:
    for name in WEIGHT_NAMES[directory]:
        if (root / directory / name).is_file():
            return root / directory / name
    return None


def missing_files(root: Path, components: Iterable[str]) -> list[str]:
    """Every required file absent for ``components``, each with what it should contain."""
    out = []
    for rel in dict.fromkeys(f for c in components for f in COMPONENT_FILES[c]):
        present = (
            _weights_file(root, rel) is not None if rel in WEIGHT_NAMES else (root / rel).is_file()
        )
        if not present:
            shown = f"{rel}/{WEIGHT_NAMES[rel][0]}" if rel in WEIGHT_NAMES else rel
            out.append(f"{root / shown}: {CONTENTS[rel]}")
    return out


def split_net(sd: StateDict) -> dict[str, StateDict]:
    """net.pth -> {prefix: state_dict without the prefix}, split on the first dot."""
    parts: dict[str, StateDict] = {p: {} for p in NET_COMPONENTS.values()}
    unknown = []
    for key, value in sd.items():
        prefix, _, rest = key.partition(".")
        if prefix in parts:
            parts[prefix][rest] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{NET}: unexpected keys outside the five Hallo2 modules: {_summarise(sorted(unknown))}"
        )
    return parts


def vae_state_dict(sd: StateDict) -> StateDict:
    """Accept legacy and current attention names; attention weights stored as 1x1 convs are
    reshaped to linear (very old conversions did that)."""
    sd = _apply_renames(sd, VAE_RENAMES)
    for k, v in sd.items():
        if ".mid_block.attentions.0.to_" in k and k.endswith(".weight") and v.dim() == 4:
            sd[k] = v[:, :, 0, 0]
    return sd


def wav2vec_state_dict(sd: StateDict) -> StateDict:
    """Strip ``wav2vec2.``, drop the CTC head and the SpecAugment embedding, fold weight norm."""
    sd = _apply_renames(sd, WAV2VEC_RENAMES, WAV2VEC_DROPS)
    base = "encoder.pos_conv_embed.conv."
    if base + "weight_g" in sd and base + "weight_v" in sd:
        # weight_norm(dim=2) on the positional conv: fold it so the graph holds plain weights.
        sd[base + "weight"] = fold_weight_norm(
            sd.pop(base + "weight_g"), sd.pop(base + "weight_v"), dim=2
        )
    return sd


def motion_config_from_net(den: StateDict) -> MotionConfig:
    """Hallo2 additions whose sizes net.pth reveals; head counts keep the official values."""
    to_k = next((v for k, v in den.items() if k.endswith("attn2_0.to_k.weight")), None)
    pe = next((v for k, v in den.items() if k.endswith("pos_encoder.pe")), None)
    if to_k is None or pe is None:
        raise CheckpointError(
            f"{NET}: the denoising_unet has no audio or motion modules; this is "
            "not a Hallo2 checkpoint"
        )
    return MotionConfig(audio_attention_dim=to_k.shape[1], motion_pe_max_len=pe.shape[1])


@dataclass
class Pretrained:
    """Loaded components: ``modules[name]`` for each requested name, and the config they share."""

    config: ModelConfig
    modules: dict[str, nn.Module] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # component -> weight file it came from

    def __getitem__(self, name: str) -> nn.Module:
        return self.modules[name]


def load_pretrained(
    root: str | Path, components: Iterable[str] | None = None, dtype: torch.dtype = torch.float32
) -> Pretrained:
    """Load ``components`` (default: all of ``COMPONENTS``) from an official pretrained_models/.

    Every missing file for the request is reported in one ``CheckpointError`` before any weight
    is read. Modules are built on the meta device and the checkpoint tensors assigned to them
    (no random init, no copy), cast to ``dtype``, in eval mode without gradients.
    """
    root = Path(root)
    names = list(dict.fromkeys(components or COMPONENTS))
    unknown = [c for c in names if c not in COMPONENT_FILES]
    if unknown:
        raise OptionError(f"unknown components {unknown}; known: {', '.join(COMPONENTS)}")
    if not root.is_dir():
        raise CheckpointError(
            f"checkpoint directory {root} does not exist: point it at the "
            "official pretrained_models/ folder"
        )
    missing = missing_files(root, names)
    if missing:
        raise CheckpointError(
            f"{len(missing)} required file(s) missing under {root}:\n  " + "\n  ".join(missing)
        )
    sds, files, cfg = _read_sources(root, names)
    out = Pretrained(config=cfg, files=files)
    for name in names:
        with torch.device("meta"):
            module = build_module(name, cfg)
        out.modules[name] = strict_load(module, sds[name], f"{files[name]} [{name}]", dtype)
        log.info("loaded %s from %s", name, files[name])
    return out


def _read_sources(
    root: Path, names: list[str]
) -> tuple[dict[str, StateDict], dict[str, str], ModelConfig]:
    """Read each needed file once; derive the ModelConfig; return per-component state dicts."""
    sds: dict[str, StateDict] = {}
    files: dict[str, str] = {}
    cfg_kw: dict = {}
    if "audio_proj" in names or "audio_encoder" in names:
        cfg_kw["wav2vec"] = Wav2Vec2Config.from_json(
            _read_json(root / WAV2VEC_DIR / "config.json", CONTENTS[f"{WAV2VEC_DIR}/config.json"])
        )
    if any(n in NET_COMPONENTS for n in names):
        _read_net(root, "audio_proj" in names, cfg_kw, sds, files)
    if "vae_encoder" in names or "vae_decoder" in names:
        _read_vae(root, cfg_kw, sds, files)
    if "audio_encoder" in names:
        path = _weights_file(root, WAV2VEC_DIR)
        sds["audio_encoder"] = wav2vec_state_dict(read_state_dict(path, CONTENTS[WAV2VEC_DIR]))
        files["audio_encoder"] = str(path)
    for name, rel, make, key in (
        ("face_restorer", NET_G, CodeFormerConfig, "codeformer"),
        ("bg_upsampler", REALESRGAN, RRDBConfig, "rrdb"),
        ("face_detector", FACE_DETECTOR, RetinaFaceConfig, "retinaface"),
        ("face_parser", FACE_PARSER, ParseNetConfig, "parsenet"),
    ):
        if name in names:
            sd = _unwrap(
                read_state_dict(root / rel, CONTENTS[rel]), root / rel, ("params_ema", "params")
            )
            # the released detector was saved from DataParallel; facelib strips the prefix too
            sd = {k.removeprefix("module."): v for k, v in sd.items()}
            cfg_kw[key] = make.from_state_dict(sd)
            sds[name], files[name] = sd, str(root / rel)
    return sds, files, ModelConfig(**cfg_kw)


def _read_net(root: Path, audio: bool, cfg_kw: dict, sds: dict, files: dict) -> None:
    """net.pth + the SD UNet config: both UNets, the heads and their configs."""
    cfg_kw["unet"] = UNetConfig.from_json(_read_json(root / UNET_CONFIG, CONTENTS[UNET_CONFIG]))
    parts = split_net(read_state_dict(root / NET, CONTENTS[NET]))
    cfg_kw["motion"] = motion_config_from_net(parts["denoising_unet"])
    heads = {
        f"{p}.{k}": v
        for p in ("face_locator", "imageproj", "audioproj")
        for k, v in parts[p].items()
    }
    w = cfg_kw.get("wav2vec")
    cfg_kw["heads"] = (
        HeadsConfig.from_state_dict(heads, w.num_hidden_layers, w.hidden_size)
        if audio
        else HeadsConfig.from_state_dict(heads)
    )
    for n, prefix in NET_COMPONENTS.items():
        sds[n], files[n] = parts[prefix], str(root / NET)


def _read_vae(root: Path, cfg_kw: dict, sds: dict, files: dict) -> None:
    """The VAE config and weights, split into the encoder and decoder halves."""
    cfg_kw["vae"] = VAEConfig.from_json(
        _read_json(root / VAE_DIR / "config.json", CONTENTS[f"{VAE_DIR}/config.json"])
    )
    path = _weights_file(root, VAE_DIR)
    vae = vae_state_dict(read_state_dict(path, CONTENTS[VAE_DIR]))
    enc = ("encoder.", "quant_conv.")
    sds["vae_encoder"] = {k: v for k, v in vae.items() if k.startswith(enc)}
    sds["vae_decoder"] = {k: v for k, v in vae.items() if not k.startswith(enc)}
    files["vae_encoder"] = files["vae_decoder"] = str(path)
