"""Super-resolution runtime: geometry, windows, paste-back placement, errors (CPU, stub engines).

The stub session gives each SR engine a known, simple behaviour (the restorer returns its input,
the upsampler is nearest x2, the parser calls everything face), so what is tested is the
runtime's own work: where faces are cut and pasted, which frames each window gets, what happens
without a face. The real networks' graphs are tested in tests/export (ONNX parity) and end to
end in test_engine_runtime.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hallo2rt.engines.spec import EngineSpec, TensorSpec
from hallo2rt.runtime.geometry import (
    erode,
    gaussian_blur,
    invert_affine,
    similarity_transform,
    warp_affine,
)
from hallo2rt.runtime.sr import (
    TEMPLATE_512,
    NoFaceError,
    SuperResolver,
    paste_face,
    upscale_video,
    windows,
)

FACE, DETECT, EMB = 64, 640, 8


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> torch.Tensor:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return torch.tensor([[[c, -s, tx], [s, c, ty]]], dtype=torch.float32)


def _apply(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    return pts @ m[0, :, :2].T + m[0, :, 2]


def test_similarity_fit_recovers_a_known_transform_and_inverts():
    src = torch.tensor(TEMPLATE_512)
    m = _similarity(12.0, 0.37, 20.0, -5.0)
    fit = similarity_transform(src[None], _apply(m, src))
    torch.testing.assert_close(fit, m, atol=1e-4, rtol=0)
    back = _apply(invert_affine(fit), _apply(fit, src))
    torch.testing.assert_close(back, src, atol=1e-3, rtol=0)


def test_warp_affine_follows_opencv_pixel_centres_and_border():
    img = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(1, 2, 5, 6)
    shift = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]])  # dst = src + (2, 1)
    out = warp_affine(img, shift, (5, 6), border=(-1.0, -2.0))
    torch.testing.assert_close(out[..., 1:, 2:], img[..., :-1, :-2])  # exact integer shift
    # per-channel constant border (up to the float error of grid_sample's normalised grid)
    torch.testing.assert_close(out[:, 0, 0], torch.full((1, 6), -1.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[:, 1, :, :2], torch.full((1, 5, 2), -2.0), atol=1e-4, rtol=0)
    half = torch.tensor([[[2.0, 0.0, 0.5], [0.0, 2.0, 0.5]]])  # x2: pixel i lands at 2i + 0.5
    up = warp_affine(img, half, (10, 12))
    # output (x 6, y 4) samples (2.75, 1.75); the image is linear: 30 c + 6 y + x
    torch.testing.assert_close(up[0, :, 4, 6], torch.tensor([13.25, 43.25]))


def test_erode_and_blur_match_opencv_conventions():
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 2:7, 2:7] = 1
    assert erode(mask, 3)[0, 0].nonzero().min(0).values.tolist() == [3, 3]
    assert erode(torch.ones(1, 1, 4, 4), 3).min() == 1  # the image border does not erode
    centre = F.pad(mask, (4, 4, 4, 4))  # nothing within the kernel radius of the border
    torch.testing.assert_close(gaussian_blur(centre, 5).sum(), centre.sum())  # normalised
    g = torch.exp(-((torch.arange(5.0) - 2) ** 2) / (2 * 1.1**2))  # sigma from k = 5
    torch.testing.assert_close(
        gaussian_blur(F.pad(torch.ones(1, 1, 1, 1), (2, 2, 2, 2)), 5)[0, 0, 2, 2],
        (g / g.sum())[2] ** 2,
    )


@pytest.mark.parametrize("tx", [40.0, -30.0, 500.0])  # inside, over the edge, outside
def test_pasting_on_the_face_box_alone_equals_pasting_on_the_whole_frame(tx):
    g = torch.Generator().manual_seed(0)
    bg = torch.rand(1, 3, 160, 200, generator=g)
    face = torch.rand(1, 3, 96, 96, generator=g)
    parse = torch.rand(1, 1, 96, 96, generator=g)
    inv = _similarity(17.0, 1.1, tx, 30.0)  # crop -> output, rotated
    full = paste_face(bg, face, parse, inv, 2, roi=False)
    # equal up to float rounding of the shifted sampling grid (1/255 is 4e-3)
    torch.testing.assert_close(paste_face(bg, face, parse, inv, 2), full, atol=1e-4, rtol=0)
    assert not torch.equal(full, bg) or tx == 500.0


class StubSession:
    """The four SR engines with known behaviour; records every restorer call."""

    def __init__(self, landmarks=None, window=16, overlap=4, bg_black=False, face_size=FACE):
        self.device = torch.device("cpu")
        self.landmarks, self.bg_black, self.calls = landmarks, bg_black, []
        t = lambda n, *d: TensorSpec(n, "float32", d)  # noqa: E731
        self.specs = {
            "face_restorer": EngineSpec(
                "face_restorer",
                (
                    t("faces", "sr_new", 3, face_size, face_size),
                    t("context", overlap, EMB, 16, 16),
                    t("context_valid", overlap),
                    t("fidelity", 1),
                ),
                (t("restored", "sr_new", 3, face_size, face_size),),
                {"sr_new": (1, window - overlap, window)},
            ),
            "face_detector": EngineSpec("face_detector", (t("image", 1, 3, DETECT, DETECT),), ()),
            "bg_upsampler": EngineSpec(
                "bg_upsampler",
                (t("image", 1, 3, "height", "width"),),
                (),
                {"height": (32, 64, 256), "width": (32, 64, 256)},
            ),
            "face_parser": EngineSpec("face_parser", (t("face", 1, 3, face_size, face_size),), ()),
        }

    def spec(self, name):
        return self.specs[name]

    def run(self, name, **x):
        if name == "face_restorer":
            n = x["faces"].shape[0]
            self.calls.append((n, x["context_valid"].tolist(), x["faces"].clone()))
            feats = x["faces"].mean((1, 2, 3))[:, None, None, None].expand(n, EMB, 16, 16)
            return {"restored": x["faces"], "features": feats}
        if name == "bg_upsampler":
            img = x["image"]
            out = F.interpolate(img, scale_factor=2.0, mode="nearest")
            return {
                "upscaled": torch.zeros_like(out)
                if self.bg_black and img.shape[-1] != FACE
                else out
            }
        if name == "face_parser":
            logits = torch.zeros(1, 19, *x["face"].shape[-2:])
            logits[:, 1] = 1  # class 1 (skin) is face everywhere
            return {"parsing": logits}
        if name == "face_detector":
            scores = torch.zeros(1, 3)
            marks = torch.zeros(1, 3, 10)
            if self.landmarks is not None:
                scores[0, 1] = 0.95
                marks[0, 1] = self.landmarks.reshape(-1)
            return {"scores": scores, "landmarks": marks, "boxes": torch.zeros(1, 3, 4)}
        raise KeyError(name)


def _landmarks_for(m_frame_to_face: torch.Tensor, frame: int) -> torch.Tensor:
    """The template points seen in the frame, in detector-input pixels."""
    template = torch.tensor(TEMPLATE_512) * (FACE / 512)
    return _apply(invert_affine(m_frame_to_face), template) * (DETECT / frame)


def test_a_known_face_box_is_cut_out_and_pasted_back_where_it_was():
    size, scale = 128, 2
    frame = torch.full((1, 3, size, size), -1.0)  # black, in [-1, 1]
    frame[..., 40:72, 50:82] = 1.0  # a white "face" box
    to_face = _similarity(0.0, 1.0, -34.0, -24.0)  # the box lands at crop [16:48, 16:48]
    session = StubSession(_landmarks_for(to_face, size), bg_black=True)
    sr = SuperResolver(session, size, size, scale=scale)
    out = torch.cat([*sr.push(frame.expand(16, -1, -1, -1)), *sr.flush()])
    assert out.shape == (16, size * scale, size * scale, 3) and out.dtype == torch.uint8
    crop = session.calls[0][2][0]  # what the restorer saw: the box at its template place
    assert (crop[:, 17:47, 17:47] > 0.99).all() and (crop[:, :12] < -0.99).all()
    # the background came back black, so every bright pixel is pasted face: at the box x 2
    bright = (out[0].float().mean(-1) > 128).nonzero()
    assert bright.min(0).values.tolist() == pytest.approx([80, 100], abs=2)
    assert bright.max(0).values.tolist() == pytest.approx([143, 163], abs=2)
    assert out[0, 90:134, 110:154].float().mean() > 250  # inside: the face, blended fully


def test_windows_are_the_official_ones_without_recomputing_shared_frames():
    session = StubSession(_landmarks_for(_similarity(0, 1, -32, -32), 64))
    sr = SuperResolver(session, 64, 64, scale=1)
    frames = torch.rand(41, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    outs = []
    for i in range(0, 41, 5):  # clips of 5 arrive; windows complete independently of them
        outs += list(sr.push(frames[i : i + 5]))
    outs += list(sr.flush())
    assert sum(o.shape[0] for o in outs) == 41  # every frame (the official drops the last)
    official = windows(41, 16, 4)
    assert official == [(0, 16), (12, 28), (24, 40), (36, 41)]
    new = [n for n, _, _ in session.calls]
    assert new == [16, 12, 12, 1]  # the shared 4 frames of each window are not re-encoded
    assert [v for _, v, _ in session.calls] == [[0.0] * 4] + [[1.0] * 4] * 3
    assert sr.frames_without_face == 0


def test_a_frame_without_a_face_reuses_the_last_landmarks_and_none_at_all_is_an_error(tmp_path):
    session = StubSession(None)
    sr = SuperResolver(session, 64, 64, scale=2)
    with pytest.raises(NoFaceError, match="no face was found in frames 0-15"):
        list(sr.push(torch.zeros(16, 3, 64, 64)))
    # landmarks found once, then lost: the later frames keep them
    session = StubSession(_landmarks_for(_similarity(0, 1, -32, -32), 64))
    sr = SuperResolver(session, 64, 64, scale=2)
    list(sr.push(torch.zeros(16, 3, 64, 64)))
    session.landmarks = None
    out = list(sr.push(torch.zeros(12, 3, 64, 64)))
    assert out[0].shape[0] == 12 and sr.frames_without_face == 12


def test_bad_options_and_frame_sizes_are_refused():
    session = StubSession(None)
    with pytest.raises(ValueError, match="--upscale 3"):
        SuperResolver(session, 64, 64, scale=3)
    with pytest.raises(ValueError, match="--fidelity 1.5"):
        SuperResolver(session, 64, 64, fidelity=1.5)
    with pytest.raises(Exception, match="export the SR engines with --size 512"):
        SuperResolver(session, 512, 512)
    old = session.specs["face_restorer"]  # an engine exported by an earlier version
    session.specs["face_restorer"] = EngineSpec(
        "face_restorer", (old.inputs[0], old.inputs[3]), old.outputs, old.profiles
    )
    with pytest.raises(Exception, match="export and build it again"):
        SuperResolver(session, 64, 64)


def test_upscale_video_without_a_face_leaves_no_output(tmp_path):
    from .media_helpers import write_silent_video

    write_silent_video(tmp_path / "in.mp4", frames=5, size=64)
    out = tmp_path / "out.mp4"
    with pytest.raises(NoFaceError):
        upscale_video(StubSession(None), tmp_path / "in.mp4", out, scale=2)
    assert not out.exists() and not list(tmp_path.glob(".out.mp4*"))


@pytest.mark.parametrize("scale", [2, 4])
def test_upscale_video_keeps_every_frame(tmp_path, scale):
    av = pytest.importorskip("av")
    from .media_helpers import write_silent_video

    write_silent_video(tmp_path / "in.mp4", frames=23, size=64)
    session = StubSession(_landmarks_for(_similarity(0, 1, -32, -32), 64))
    out = upscale_video(session, tmp_path / "in.mp4", tmp_path / "out.mp4", scale=scale)
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert (v.width, v.height) == (64 * scale, 64 * scale) and not c.streams.audio
        assert sum(1 for _ in c.decode(v)) == 23
    assert [n for n, _, _ in session.calls] == [16, 7]


def test_frames_already_uint8_pass_through_the_writer_unchanged():
    from hallo2rt.runtime.video import host_frames

    frames = torch.randint(0, 256, (2, 4, 6, 3), dtype=torch.uint8)
    np.testing.assert_array_equal(host_frames(frames), frames.numpy())


# --- super-resolution on another worker (hallo2rt serve --upscale) -------------------------------


class CarryingStub(StubSession):
    """A stub whose output depends on what one window hands the next: the restorer adds the
    shared frames' features (context) to the faces, and the detector finds the face only in
    bright frames (a dark frame reuses the last landmarks)."""

    def run(self, name, **x):
        if name == "face_restorer":
            out = super().run(name, **x)
            ctx = (x["context"].mean((1, 2, 3)) * x["context_valid"]).sum()
            return {"restored": out["restored"] * 0.5 + ctx * 0.1, "features": out["features"]}
        if name == "face_detector" and float(x["image"].mean()) < 0.2:
            return {"scores": torch.zeros(1, 3), "landmarks": torch.zeros(1, 3, 10)}
        return super().run(name, **x)


def _in_clips(sr, frames, clip=5):
    outs = []
    for i in range(0, frames.shape[0], clip):
        outs += list(sr.push(frames[i : i + clip]))
    return torch.cat(outs + list(sr.flush()))


def test_a_resolver_on_another_worker_gives_the_same_frames_as_in_process():
    """PipelinedSuperResolver + WindowRestorer (what the server's generator and SR replicas
    run) equal SuperResolver frame for frame: the same windows, and the state a window hands
    the next (encoder features, last landmarks, counters) travels with each call."""
    from hallo2rt.runtime.sr_remote import PipelinedSuperResolver, WindowRestorer

    marks = _landmarks_for(_similarity(0, 1, -32, -32), 64)
    frames = torch.rand(41, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    frames[18:30] = -0.9  # dark: no face found, the last landmarks are reused
    local = SuperResolver(CarryingStub(marks), 64, 64, scale=2, fidelity=0.3)
    want = _in_clips(local, frames)
    restorer = WindowRestorer(CarryingStub(marks))
    remote = PipelinedSuperResolver(restorer, 64, 64, scale=2, fidelity=0.3, depth=1)
    got = _in_clips(remote, frames)
    assert got.shape == (41, 128, 128, 3) and got.dtype == torch.uint8
    assert torch.equal(got, want)
    assert remote.frames_out == local.frames_out == 41
    assert remote.frames_without_face == local.frames_without_face == 12
    assert [n for n, _, _ in restorer.session.calls] == [16, 12, 12, 1]
    remote._thread.join(timeout=5)
    assert not remote._thread.is_alive()  # flush stops the worker thread
    # with state dropped, the context-dependent output differs (the test can fail)
    fresh = SuperResolver(CarryingStub(marks), 64, 64, scale=2, fidelity=0.3)
    alone = torch.cat([*fresh.push(frames[16:28]), *fresh.flush()])
    assert alone.shape == want[16:28].shape and not torch.equal(alone, want[16:28])


def test_a_resolver_on_another_worker_reports_the_restorers_errors():
    from hallo2rt.runtime.sr_remote import PipelinedSuperResolver, WindowRestorer

    restorer = WindowRestorer(StubSession(None))
    with pytest.raises(Exception, match="export the SR engines with --size 512"):
        PipelinedSuperResolver(restorer, 512, 512)  # checked before any frame is made
    sr = PipelinedSuperResolver(restorer, 64, 64, scale=2)
    with pytest.raises(NoFaceError, match="no face was found in frames 0-15"):
        _in_clips(sr, torch.zeros(20, 3, 64, 64))
    assert not sr._thread.is_alive()
    sr = PipelinedSuperResolver(restorer, 64, 64, scale=2)
    sr.close()  # a cancelled job: the thread ends without work
    sr._thread.join(timeout=5)
    assert not sr._thread.is_alive()
