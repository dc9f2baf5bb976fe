"""The SR path's networks: RetinaFace-R50 and ParseNet layouts, the streamed CodeFormer window."""

from __future__ import annotations

import pytest
import torch

from hallo2rt.export import load_pretrained
from hallo2rt.export.checkpoints import FACE_DETECTOR, read_state_dict
from hallo2rt.export.config import ParseNetConfig, RetinaFaceConfig
from hallo2rt.export.modules import build_module
from hallo2rt.random_weights import full_config, make_random_pretrained
from hallo2rt.runtime.sr import windows


def _meta(name: str):
    with torch.device("meta"):
        return build_module(name, full_config()).state_dict()


def test_full_retinaface_has_facexlibs_resnet50_layout():
    sd = _meta("face_detector")
    # shapes fixed by facexlib's retinaface.py (cfg_re50) and torchvision's resnet50
    want = {
        "body.conv1.weight": (64, 3, 7, 7),
        "body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "body.layer2.0.conv2.weight": (128, 128, 3, 3),
        "body.layer4.2.bn3.running_var": (2048,),
        "fpn.output1.0.weight": (256, 512, 1, 1),
        "fpn.output3.0.weight": (256, 2048, 1, 1),
        "fpn.merge1.1.weight": (256,),
        "ssh1.conv3X3.0.weight": (128, 256, 3, 3),
        "ssh3.conv7x7_3.0.weight": (64, 64, 3, 3),
        "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
        "BboxHead.1.conv1x1.weight": (8, 256, 1, 1),
        "LandmarkHead.2.conv1x1.bias": (20,),
    }
    assert {k: tuple(sd[k].shape) for k in want} == want
    assert sum(1 for k in sd if k.startswith("body.layer") and k.endswith(".conv1.weight")) == 16
    assert not any(k.startswith(("body.fc", "body.avgpool")) for k in sd)  # getter drops them
    assert RetinaFaceConfig.from_state_dict(sd) == RetinaFaceConfig()


def test_full_parsenet_has_facelibs_layout():
    sd = _meta("face_parser")
    want = {
        "encoder.0.conv2d.weight": (64, 3, 3, 3),
        "encoder.1.conv1.conv2d.weight": (128, 64, 3, 3),
        "encoder.1.conv1.norm.norm.running_mean": (128,),
        "encoder.1.shortcut_func.conv2d.bias": (128,),
        "encoder.4.conv2.conv2d.weight": (256, 256, 3, 3),
        "body.9.conv2.norm.norm.weight": (256,),
        "decoder.3.conv1.conv2d.weight": (64, 128, 3, 3),
        "out_img_conv.conv2d.weight": (3, 64, 3, 3),
        "out_mask_conv.conv2d.weight": (19, 64, 3, 3),
    }
    assert {k: tuple(sd[k].shape) for k in want} == want
    assert "body.0.shortcut_func.conv2d.weight" not in sd  # same size and width: identity
    assert "encoder.1.conv1.conv2d.bias" not in sd  # BatchNorm convs have no bias
    assert ParseNetConfig.from_state_dict(sd).steps == 4
    assert ParseNetConfig.from_state_dict(sd).in_size == 512


def test_detector_priors_and_decoding_follow_facexlib(tiny):
    net = tiny["face_detector"]
    priors = net.priors(640, 640)
    assert priors.shape == (2 * (80 * 80 + 40 * 40 + 20 * 20), 4)
    torch.testing.assert_close(priors[0], torch.tensor([4, 4, 16, 16]) / 640)
    torch.testing.assert_close(priors[1], torch.tensor([4, 4, 32, 32]) / 640)
    torch.testing.assert_close(priors[-1], torch.tensor([624, 624, 512, 512]) / 640)
    zeros = torch.zeros(1, priors.shape[0], 4)
    boxes, points = net.decode(zeros, torch.zeros(1, priors.shape[0], 10), priors)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([-4, -4, 12, 12]) / 640)
    torch.testing.assert_close(points[0, 0], torch.tensor([4.0 / 640] * 10))
    with torch.no_grad():
        loc, conf, landm = net(torch.randn(1, 3, 64, 96))
    anchors = 2 * (8 * 12 + 4 * 6 + 2 * 3)
    assert loc.shape == (1, anchors, 4) and landm.shape == (1, anchors, 10)
    torch.testing.assert_close(conf.sum(-1), torch.ones(1, anchors))  # softmaxed


def test_the_detector_loads_with_and_without_the_dataparallel_prefix(tiny_root, tmp_path):
    sd = read_state_dict(tiny_root / FACE_DETECTOR)
    assert all(k.startswith("module.") for k in sd)  # as the released file
    make_random_pretrained(tmp_path, "tiny", seed=1234)
    torch.save({k.removeprefix("module."): v for k, v in sd.items()}, tmp_path / FACE_DETECTOR)
    a = load_pretrained(tmp_path, ["face_detector"])["face_detector"].state_dict()
    b = load_pretrained(tiny_root, ["face_detector"])["face_detector"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parsenet_gives_19_class_logits_per_pixel(tiny):
    with torch.no_grad():
        out = tiny["face_parser"](torch.rand(1, 3, 64, 64) * 2 - 1)
    assert out.shape == (1, 19, 64, 64)


@pytest.mark.parametrize("total", [7, 16, 23, 31])
def test_streamed_codeformer_windows_equal_the_official_windows(tiny, total):
    """Official: windows of 16 sharing 4, every frame of a window recomputed, the shared outputs
    dropped. Streamed: only new frames encoded/decoded, the shared ones as context features."""
    cf = tiny["face_restorer"]
    side = cf.cfg.img_size
    g = torch.Generator().manual_seed(total)
    frames = torch.rand(total, 3, side, side, generator=g) * 2 - 1
    w = torch.tensor([0.7])
    with torch.no_grad():
        want = []
        for i, (a, b) in enumerate(windows(total, 16, 4)):
            out = cf(frames[None, a:b], w)[0]
            want.append(out if i == 0 else out[4:])
        want = torch.cat(want)
        context, valid, got, start = torch.zeros(4, cf.cfg.emb_dim, 16, 16), torch.zeros(4), [], 0
        while start < total:
            n = 16 if start == 0 else 12
            out, feats = cf.window(frames[start : start + n], context, valid, w)
            got.append(out)
            context = torch.cat([context, feats])[-4:]
            valid = torch.cat([valid, torch.ones(feats.shape[0])])[-4:]
            start += n
    torch.testing.assert_close(torch.cat(got), want, atol=1e-4, rtol=1e-4)
