"""SCRFD decoding, NMS, alignment and the ArcFace preprocessing, on stand-in ONNX models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hallo2rt.runtime.face_analysis import (
    ARCFACE_TEMPLATE,
    FaceAnalyzer,
    anchor_centers,
    letterbox,
    lip_box_from_keypoints,
    nms,
)
from hallo2rt.runtime.geometry import umeyama_similarity as similarity
from hallo2rt.runtime.geometry import warp_affine_image as warp_affine
from hallo2rt.runtime.media import MediaError

from .fake_face_models import write_face_models

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

KPS = (-1.0, -1.0, 1.0, -1.0, 0.0, 0.5, -0.8, 2.0, 0.8, 2.0)  # eyes, nose, mouth corners
BIG = (16, 10, 20, 1, 0.9, (2.0, 3.0, 4.0, 5.0), KPS)  # stride 16, row 10, col 20, anchor 1
OVERLAP = (16, 10, 20, 0, 0.8, (2.0, 3.0, 4.0, 4.5), KPS)  # suppressed by NMS
SMALL = (8, 70, 10, 0, 0.95, (1.0, 1.0, 1.0, 1.0), KPS)  # higher score, smaller box


def test_anchor_layout_matches_insightface():
    c = anchor_centers(640, 32)
    assert c.shape == (20 * 20 * 2, 2)
    assert c[:4].tolist() == [[0, 0], [0, 0], [32, 0], [32, 0]]  # x first, anchors adjacent
    assert c[40].tolist() == [0, 32]  # second row


def test_letterbox_keeps_the_aspect_ratio_top_left():
    canvas, scale = letterbox(np.full((960, 1280, 3), 200, np.uint8))
    assert scale == 0.5 and canvas.shape == (640, 640, 3)
    assert canvas[479, 639, 0] == 200 and canvas[480, 0, 0] == 0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7])) == [0, 2]


def test_similarity_recovers_a_known_transform_and_warp_lands_on_the_template():
    angle, scale, shift = 0.3, 1.7, np.array([40.0, 25.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_TEMPLATE.astype(np.float64)
    dst = src @ rot.T + shift
    m = similarity(dst.astype(np.float32), ARCFACE_TEMPLATE)  # image -> template
    np.testing.assert_allclose(dst @ m[:, :2].T + m[:, 2], src, atol=1e-3)
    img = np.zeros((300, 300, 3), np.float32)
    for x, y in np.round(dst).astype(int):
        img[y - 1 : y + 2, x - 1 : x + 2] = 255.0
    crop = warp_affine(img, similarity(np.round(dst).astype(np.float32), ARCFACE_TEMPLATE), 112)
    for x, y in np.round(ARCFACE_TEMPLATE).astype(int):
        assert crop[y, x, 0] > 100  # each keypoint's dot arrives at its template position


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    d = tmp_path_factory.mktemp("face_analysis") / "models"
    arc = write_face_models(d, [BIG, OVERLAP, SMALL])
    return FaceAnalyzer(d), arc


def test_detection_decodes_boxes_and_keypoints_in_source_pixels(analyzer):
    fa, _ = analyzer
    rgb = np.zeros((960, 1280, 3), np.uint8)  # letterbox scale 0.5
    faces = fa.detect(rgb)
    assert len(faces) == 2  # OVERLAP suppressed
    big = fa.largest(rgb)
    # anchor centre (20*16, 10*16) = (320, 160); distances x16; / 0.5 back to the source
    np.testing.assert_allclose(big.box, [576, 224, 768, 480])
    np.testing.assert_allclose(big.keypoints[0], [(320 - 16) * 2, (160 - 16) * 2])
    assert big.score == pytest.approx(0.9)
    assert faces[0].score == pytest.approx(0.95)  # best score first, but not the largest
    lx, ly, rx, ry = lip_box_from_keypoints(big)
    assert lx < rx and ly < ry and lx == pytest.approx((320 - 12.8) * 2)


def test_embedding_is_the_raw_output_on_the_aligned_rgb_crop(analyzer):
    fa, arc = analyzer
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (960, 1280, 3), dtype=np.uint8)
    face = fa.largest(rgb)
    emb = fa.embed(rgb, face)
    crop = warp_affine(rgb, similarity(face.keypoints, ARCFACE_TEMPLATE), 112)
    want = arc(torch.from_numpy((crop - 127.5) / 127.5).permute(2, 0, 1)[None].float())
    np.testing.assert_allclose(emb, want.detach().numpy()[0], rtol=1e-4, atol=1e-4)
    assert emb.shape == (512,)


def test_no_face_and_missing_models_are_clear(tmp_path):
    d = tmp_path / "models"
    write_face_models(d, [])
    with pytest.raises(MediaError, match="no face found"):
        FaceAnalyzer(d).largest(np.zeros((480, 640, 3), np.uint8))
    with pytest.raises(MediaError, match="glintr100.onnx"):
        (d / "glintr100.onnx").unlink()
        FaceAnalyzer(d)
