"""Seeded random checkpoints in the official ``pretrained_models/`` layout (tests, demo, bench).

``official_layout(cfg)`` says, without allocating a weight, which files the official release
holds and every key and shape in them; ``make_random_pretrained`` fills that layout with seeded
random tensors (never zeros: the zero-initialised convs of the release are trained, non-zero
weights too) and writes it in the official formats, so ``load_pretrained`` reads it exactly as
it reads the real files.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from hallo2rt.engines.errors import OptionError
from hallo2rt.export.checkpoints import (
    COMPONENT_FILES,
    FACE_DETECTOR,
    FACE_PARSER,
    NET,
    NET_COMPONENTS,
    NET_G,
    REALESRGAN,
    UNET_CONFIG,
    VAE_DIR,
    WAV2VEC_DIR,
    Pretrained,
    strict_load,
)
from hallo2rt.export.config import (
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
from hallo2rt.export.modules import COMPONENTS, build_module
from hallo2rt.export.modules.unet import PositionalEncoding
from hallo2rt.runtime.sr import TEMPLATE_512  # where the runtime aligns faces to

log = logging.getLogger(__name__)

SD_UNET_WEIGHTS = "stable-diffusion-v1-5/unet/diffusion_pytorch_model.safetensors"
MOTION_MODULE = "motion_module/mm_sd_v15_v2.ckpt"
VAE_WEIGHTS = f"{VAE_DIR}/diffusion_pytorch_model.safetensors"
WAV2VEC_WEIGHTS = f"{WAV2VEC_DIR}/model.safetensors"
WAV2VEC_PREPROCESSOR = {
    "do_normalize": True,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "sampling_rate": 16000,
}
LEGACY_VAE = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def tiny_config() -> ModelConfig:
    """A small model with the real structure (4 levels, 16 hooked blocks, 12 SR stages...).

    64x64 pixels -> 8x8 latents; everything runs in seconds on a CPU. The UNets use 8 GroupNorm
    groups (4-8 channels each) so that the deepest maps (1x1 at 64 px) stay well conditioned.
    """
    return ModelConfig(
        unet=UNetConfig(
            block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, norm_num_groups=8
        ),
        motion=MotionConfig(audio_attention_dim=32),
        heads=HeadsConfig(
            face_locator_channels=(8, 16, 16, 32),
            face_locator_out=32,
            image_embed_dim=64,
            audio_blocks=2,
            audio_channels=32,
            audio_intermediate=64,
            audio_tokens=8,
            token_dim=32,
        ),
        vae=VAEConfig(block_out_channels=(32, 32, 64, 64)),
        wav2vec=Wav2Vec2Config(
            conv_dim=(32,) * 7,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
        codeformer=CodeFormerConfig(  # 64^2 face crops: 3 levels down to the 16^2 tokens
            nf=32,
            ch_mult=(1, 1, 2),
            emb_dim=32,
            codebook_size=64,
            dim_embd=64,
            n_layers=2,
            connect_list=("32", "64"),
            img_size=64,
        ),
        rrdb=RRDBConfig(num_feat=16, num_block=2, num_grow_ch=8),
        retinaface=RetinaFaceConfig(width=8, layers=(1, 1, 1, 1), out_channels=16),
        parsenet=ParseNetConfig(in_size=64, base_ch=8, res_depth=1, ch_range=(8, 16)),
    )


def full_config() -> ModelConfig:
    """The released model's architecture (docs/model.md §2)."""
    return ModelConfig(
        codeformer=CodeFormerConfig(),
        rrdb=RRDBConfig(),
        retinaface=RetinaFaceConfig(),
        parsenet=ParseNetConfig(),
    )


CONFIGS: dict[str, Callable[[], ModelConfig]] = {"tiny": tiny_config, "full": full_config}


@dataclass(frozen=True)
class FileSpec:
    """One checkpoint file of the layout: relative path, format, and key -> shape."""

    path: str  # relative to pretrained_models/
    fmt: str  # "torch" (torch.save), "safetensors"
    wrap: str | None  # top-level key the state dict sits under ("params_ema") or None
    shapes: dict[str, tuple[int, ...]]  # every tensor in the file


def _meta_shapes(name: str, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        module = build_module(name, cfg)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def official_layout(
    cfg: ModelConfig, legacy_vae_names: bool = True, include_unused: bool = True
) -> list[FileSpec]:
    """Files, keys and shapes of the official layout for ``cfg``, built on the meta device.

    ``include_unused`` adds the SD1.5 UNet weights and the AnimateDiff motion module, which the
    official code loads only to have net.pth overwrite them (docs/model.md §1.4): hallo2rt never
    reads them. ``legacy_vae_names`` writes the VAE attention as query/key/value/proj_attn, as the
    released sd-vae-ft-mse file does.
    """
    net = {}
    for comp, prefix in NET_COMPONENTS.items():
        net.update({f"{prefix}.{k}": s for k, s in _meta_shapes(comp, cfg).items()})
    vae = {**_meta_shapes("vae_encoder", cfg), **_meta_shapes("vae_decoder", cfg)}
    if legacy_vae_names:
        vae = {_legacy_vae_key(k): s for k, s in vae.items()}
    w = cfg.wav2vec
    w2v = {
        f"wav2vec2.{k}": s
        for k, s in _meta_shapes("audio_encoder", cfg).items()
        if k != "encoder.pos_conv_embed.conv.weight"
    }
    k_pos = w.num_conv_pos_embeddings
    w2v.update(
        {
            "wav2vec2.encoder.pos_conv_embed.conv.weight_g": (1, 1, k_pos),
            "wav2vec2.encoder.pos_conv_embed.conv.weight_v": (
                w.hidden_size,
                w.hidden_size // w.num_conv_pos_embedding_groups,
                k_pos,
            ),
            "wav2vec2.masked_spec_embed": (w.hidden_size,),
            "lm_head.weight": (32, w.hidden_size),
            "lm_head.bias": (32,),
        }
    )
    files = [
        FileSpec(NET, "torch", None, net),
        FileSpec(VAE_WEIGHTS, "safetensors", None, vae),
        FileSpec(WAV2VEC_WEIGHTS, "safetensors", None, w2v),
    ]
    if cfg.codeformer is not None:
        files.append(FileSpec(NET_G, "torch", "params_ema", _meta_shapes("face_restorer", cfg)))
    if cfg.rrdb is not None:
        files.append(FileSpec(REALESRGAN, "torch", "params_ema", _meta_shapes("bg_upsampler", cfg)))
    if cfg.retinaface is not None:  # saved from DataParallel: every key has 'module.'
        det = {f"module.{k}": v for k, v in _meta_shapes("face_detector", cfg).items()}
        files.append(FileSpec(FACE_DETECTOR, "torch", None, det))
    if cfg.parsenet is not None:
        files.append(FileSpec(FACE_PARSER, "torch", None, _meta_shapes("face_parser", cfg)))
    if include_unused:
        ref = {
            k[len("reference_unet.") :]: s
            for k, s in net.items()
            if k.startswith("reference_unet.")
        }
        head = {
            k[len("denoising_unet.") :]: s
            for k, s in net.items()
            if k.startswith(("denoising_unet.conv_norm_out", "denoising_unet.conv_out"))
        }
        mm = {k[len("denoising_unet.") :]: s for k, s in net.items() if ".motion_modules." in k}
        files += [
            FileSpec(SD_UNET_WEIGHTS, "safetensors", None, {**ref, **head}),
            FileSpec(MOTION_MODULE, "torch", None, mm),
        ]
    return files


def _legacy_vae_key(key: str) -> str:
    for new, old in LEGACY_VAE.items():
        marker = f"mid_block.attentions.0.{new}."
        if marker in key:
            return key.replace(marker, f"mid_block.attentions.0.{old}.")
    return key


def _random_tensor(
    key: str, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """Scaled so activations stay O(1) through deep stacks; never zero. Made on the
    generator's device."""
    dev = gen.device
    if key.endswith("num_batches_tracked"):  # BatchNorm's step counter (int64, unused in eval)
        return torch.zeros(shape, dtype=torch.int64, device=dev)
    if key.endswith("running_var"):  # must be positive
        return (0.5 + torch.rand(shape, generator=gen, device=dev)).to(dtype)
    if key.endswith("pos_encoder.pe"):
        return PositionalEncoding(shape[2], shape[1]).pe.to(dev, dtype)  # the real table
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        t = torch.randn(shape, generator=gen, device=dev) / math.sqrt(fan_in)
    elif key.endswith("weight") or key.endswith("weight_g"):
        t = 1.0 + 0.1 * torch.randn(shape, generator=gen, device=dev)  # norm scales, weight-norm g
    else:
        t = 0.02 * torch.randn(shape, generator=gen, device=dev)  # biases
    return t.to(dtype)


def _key_seed(seed: int, path: str, key: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{path}:{key}".encode())) % (2**63)


def make_random_pretrained(
    root: str | Path,
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    include_unused: bool | None = None,
    legacy_vae_names: bool | None = None,
    only: Iterable[str] | None = None,
) -> ModelConfig:
    """Write a complete official-layout tree of seeded random weights under ``root``.

    ``size``: "tiny" (seconds on CPU) or "full" (the released shapes, ~12 GB in fp32).
    ``only``: write just the weight files these components read (e.g. the super-resolution
    ones: 0.6 GB at full size); the small config files are always written.
    Each tensor is drawn from its own generator seeded by (seed, file, key), so a key's values
    do not depend on which other files are written. Returns the ModelConfig written.
    """
    if size not in CONFIGS:
        raise OptionError(f"size must be one of {sorted(CONFIGS)}, got {size!r}")
    cfg = CONFIGS[size]()
    tiny = size == "tiny"
    include_unused = tiny if include_unused is None else include_unused
    legacy = (not tiny) if legacy_vae_names is None else legacy_vae_names
    root = Path(root)
    _write_json(root / UNET_CONFIG, cfg.unet.to_json())
    _write_json(root / VAE_DIR / "config.json", cfg.vae.to_json())
    _write_json(root / WAV2VEC_DIR / "config.json", cfg.wav2vec.to_json())
    _write_json(root / WAV2VEC_DIR / "preprocessor_config.json", WAV2VEC_PREPROCESSOR)
    wanted = None if only is None else {f for c in only for f in COMPONENT_FILES[c]}
    for spec in official_layout(cfg, legacy_vae_names=legacy, include_unused=include_unused):
        if wanted is not None and not any(spec.path.startswith(f) for f in wanted):
            continue
        sd = {}
        for key, shape in spec.shapes.items():
            gen = torch.Generator().manual_seed(_key_seed(seed, spec.path, key))
            sd[key] = _random_tensor(key, shape, gen, dtype)
        if spec.path == FACE_DETECTOR:
            _plant_face(sd, cfg.retinaface)
        _save(root / spec.path, spec, sd)
        log.info("wrote %s (%d tensors)", spec.path, len(sd))
        del sd
    return cfg


def random_pretrained(
    size: str = "tiny",
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    components: Iterable[str] | None = None,
) -> Pretrained:
    """Seeded random modules built directly in ``device`` memory (nothing written to disk):
    what ``load_pretrained`` returns for a random tree, without the ~10 GB tree. Each tensor is
    drawn in fp32 from its own generator on ``device`` seeded by (seed, component, key), then
    cast to ``dtype``: an fp16 build holds the fp32 build's values rounded. (Values differ
    from ``make_random_pretrained``'s, whose generators run on the CPU.)"""
    if size not in CONFIGS:
        raise OptionError(f"size must be one of {sorted(CONFIGS)}, got {size!r}")
    cfg = CONFIGS[size]()
    device = torch.device(device)
    names = list(components or COMPONENTS)
    out = Pretrained(config=cfg, files={n: f"random:{size}:{seed}" for n in names})
    for name in names:
        with torch.device("meta"):
            module = build_module(name, cfg)
        sd = {}
        for key, value in module.state_dict().items():
            gen = torch.Generator(device=device).manual_seed(_key_seed(seed, name, key))
            sd[key] = _random_tensor(key, tuple(value.shape), gen, torch.float32)
        if name == "face_detector":  # the planting works on the release's 'module.' keys
            planted = {f"module.{k}": v for k, v in sd.items()}
            _plant_face(planted, cfg.retinaface)
            sd = {k[len("module.") :]: v.to(device) for k, v in planted.items()}
        out.modules[name] = strict_load(module, sd, f"random {name}", dtype)
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _save(path: Path, spec: FileSpec, sd: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")  # never leave a half-written checkpoint
    if spec.fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    else:
        torch.save({spec.wrap: sd} if spec.wrap else sd, tmp)
    tmp.replace(path)


def _plant_face(sd: dict[str, torch.Tensor], cfg: RetinaFaceConfig) -> None:
    """Make a random detector find a face in every image, so the SR path runs end to end.

    Random heads score no anchor above facelib's 0.8 threshold. Here the box heads are shrunk so
    boxes stay near their anchors, the class heads of the two
    finer levels say "background" and those of the coarsest level "face" (the weights shrunk,
    not zeroed, so anchors still differ), and that level's landmark head places the template's
    5 points across each anchor box. Which anchor wins depends on the image; nothing else of the
    network changes."""
    for level in range(3):  # boxes ~ their anchors (random regressions overflow exp())
        box_w = f"module.BboxHead.{level}.conv1x1.weight"
        sd[box_w] = sd[box_w] * 0.01
        cls_w, cls_b = (
            f"module.ClassHead.{level}.conv1x1.weight",
            f"module.ClassHead.{level}.conv1x1.bias",
        )
        sd[cls_w] = sd[cls_w] * 0.01
        face = 8.0 if level == 2 else -8.0
        sd[cls_b] = torch.tensor([-face, face] * cfg.anchors, dtype=sd[cls_b].dtype)
    lm_w, lm_b = "module.LandmarkHead.2.conv1x1.weight", "module.LandmarkHead.2.conv1x1.bias"
    sd[lm_w] = sd[lm_w] * 0.01
    offsets = [(c - 256.0) / 512.0 / cfg.variance[0] for pt in TEMPLATE_512 for c in pt]
    sd[lm_b] = torch.tensor(offsets * cfg.anchors, dtype=sd[lm_b].dtype)
