"""The two facelib networks of Hallo2's super-resolution path (docs/model.md §2.8), written for
export.

- ``RetinaFace``: RetinaFace-ResNet50 (``facelib/detection_Resnet50_Final.pth``): a torchvision
  ResNet body (``body.``), an FPN over layer2..layer4, one SSH context module per level and
  class / box / landmark 1x1 heads. Same math as facexlib's ``retinaface.py``; ``forward``
  returns the raw head outputs (softmaxed scores), and ``priors`` the anchors they decode against.
- ``ParseNet``: the 19-class face parser (``facelib/parsing_parsenet.pth``) whose mask limits the
  paste-back of a restored face.

Parameter names are the checkpoint keys (the detector file prefixes them with ``module.``; the
loader strips it, as facelib does). BatchNorm runs in eval mode, so exporters fold it into the
convolutions.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ParseNetConfig, RetinaFaceConfig


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    """facexlib's conv_bn / conv_bn1X1 / conv_bn_no_relu parameters (the activation is applied
    by the caller, so one helper serves all three)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class _Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3)."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class _ResNetBody(nn.Module):
    """torchvision resnet50 up to layer4 (what IntermediateLayerGetter keeps)."""

    def __init__(self, width: int, layers: tuple[int, ...]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for i, blocks in enumerate(layers):
            w = width * 2**i
            stage = []
            for b in range(blocks):
                stage.append(_Bottleneck(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer1(x)
        outs = []
        for name in ("layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


class _FPN(nn.Module):
    def __init__(self, ins: list[int], out: int, leaky: float):
        super().__init__()
        self.leaky = leaky
        self.output1, self.output2, self.output3 = (_conv_bn(c, out, 1) for c in ins)
        self.merge1 = _conv_bn(out, out)
        self.merge2 = _conv_bn(out, out)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = (
            self._act(m(f))
            for m, f in zip((self.output1, self.output2, self.output3), feats, strict=True)
        )
        o2 = self._act(self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest")))
        o1 = self._act(self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest")))
        return [o1, o2, o3]


class _SSH(nn.Module):
    def __init__(self, ch: int, leaky: float):
        super().__init__()
        self.leaky = leaky
        self.conv3X3 = _conv_bn(ch, ch // 2)
        self.conv5X5_1 = _conv_bn(ch, ch // 4)
        self.conv5X5_2 = _conv_bn(ch // 4, ch // 4)
        self.conv7X7_2 = _conv_bn(ch // 4, ch // 4)
        self.conv7x7_3 = _conv_bn(ch // 4, ch // 4)  # sic: lower-case x in the checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = F.leaky_relu(self.conv5X5_1(x), self.leaky)
        c7_2 = F.leaky_relu(self.conv7X7_2(c5_1), self.leaky)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(c7_2)], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    def __init__(self, ch: int, n: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(ch, n, 1)

    def forward(self, x: torch.Tensor, per_anchor: int) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)  # (N, H, W, anchors * per_anchor)
        return out.reshape(out.shape[0], -1, per_anchor)


class RetinaFace(nn.Module):
    """BGR image minus (104, 117, 123), (N, 3, H, W) -> boxes (N, P, 4), scores (N, P, 2)
    softmaxed, landmarks (N, P, 10): raw regressions against ``priors(H, W)``."""

    def __init__(self, cfg: RetinaFaceConfig):
        super().__init__()
        self.cfg = cfg
        self.body = _ResNetBody(cfg.width, cfg.layers)
        ins = [cfg.width * 4 * 2**i for i in (1, 2, 3)]
        self.fpn = _FPN(ins, cfg.out_channels, cfg.leaky)
        for i in (1, 2, 3):
            setattr(self, f"ssh{i}", _SSH(cfg.out_channels, cfg.leaky))
        a = cfg.anchors
        self.ClassHead = nn.ModuleList(_Head(cfg.out_channels, a * 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(cfg.out_channels, a * 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(cfg.out_channels, a * 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([h(f, 4) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        conf = torch.cat([h(f, 2) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        landm = torch.cat([h(f, 10) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, F.softmax(conf, dim=-1), landm

    def priors(self, height: int, width: int) -> torch.Tensor:
        """facexlib's PriorBox: (P, 4) anchors (cx, cy, w, h) relative to the image, in the
        heads' order (level, row, column, anchor)."""
        rows = []
        for sizes, step in zip(self.cfg.min_sizes, self.cfg.steps, strict=True):
            fh, fw = math.ceil(height / step), math.ceil(width / step)
            for i, j, s in itertools.product(range(fh), range(fw), sizes):
                rows.append(
                    ((j + 0.5) * step / width, (i + 0.5) * step / height, s / width, s / height)
                )
        return torch.tensor(rows, dtype=torch.float32)

    def decode(
        self, loc: torch.Tensor, landm: torch.Tensor, priors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """facexlib's decode / decode_landm: boxes (x1, y1, x2, y2) and 5 (x, y) landmarks,
        both relative to the image (multiply by width / height)."""
        v0, v1 = self.cfg.variance
        c, wh = priors[..., :2], priors[..., 2:]
        centre = c + loc[..., :2] * v0 * wh
        size = wh * torch.exp(loc[..., 2:] * v1)
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
        pts = landm.reshape(*landm.shape[:-1], 5, 2) * v0 * wh[..., None, :] + c[..., None, :]
        return boxes, pts.reshape(landm.shape)


class _ConvLayer(nn.Module):
    """ParseNet's ConvLayer: [nearest x2] -> reflection pad -> conv [stride 2] -> [BN] -> [act]."""

    def __init__(
        self, cin: int, cout: int, scale: str = "none", bn: bool = False, act: bool = False
    ):
        super().__init__()
        self.up, self.act = scale == "up", act
        self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=not bn)
        if bn:
            self.norm = nn.Module()
            self.norm.norm = nn.BatchNorm2d(cout)  # key: norm.norm.* (NormLayer wraps it)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.norm is not None:
            x = self.norm.norm(x)
        return F.leaky_relu(x, 0.2) if self.act else x


class _ParseBlock(nn.Module):
    """ResidualBlock(relu LeakyReLU 0.2, norm bn): the shortcut is a plain ConvLayer unless the
    block keeps both size and width."""

    def __init__(self, cin: int, cout: int, scale: str = "none"):
        super().__init__()
        self.shortcut_func = (
            None if scale == "none" and cin == cout else _ConvLayer(cin, cout, scale)
        )
        first, second = {"down": ("none", "down"), "up": ("up", "none"), "none": ("none", "none")}[
            scale
        ]
        self.conv1 = _ConvLayer(cin, cout, first, bn=True, act=True)
        self.conv2 = _ConvLayer(cout, cout, second, bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """Face crop (N, 3, 512, 512) in [-1, 1] -> parsing logits (N, 19, 512, 512).

    The official forward also returns a reconstructed image (``out_img_conv``) that
    paste-back never reads; its weights load (strict) but it is not computed."""

    def __init__(self, cfg: ParseNetConfig):
        super().__init__()
        clip = cfg.clip
        enc: list[nn.Module] = [_ConvLayer(3, cfg.base_ch)]
        head = cfg.base_ch
        for _ in range(cfg.steps):
            enc.append(_ParseBlock(clip(head), clip(head * 2), "down"))
            head *= 2
        self.encoder = nn.Sequential(*enc)
        self.body = nn.Sequential(
            *(_ParseBlock(clip(head), clip(head)) for _ in range(cfg.res_depth))
        )
        dec = []
        for _ in range(cfg.steps):
            dec.append(_ParseBlock(clip(head), clip(head // 2), "up"))
            head //= 2
        self.decoder = nn.Sequential(*dec)
        self.out_img_conv = _ConvLayer(clip(head), 3)
        self.out_mask_conv = _ConvLayer(clip(head), cfg.parsing_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.encoder(x)
        return self.out_mask_conv(self.decoder(feat + self.body(feat)))
