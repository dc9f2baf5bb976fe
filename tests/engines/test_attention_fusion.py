"""The ONNX Runtime attention fusion: the exported attention subgraphs become MultiHeadAttention
without changing what the graph computes, and the CPU checks use it when scores would not fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hallo2rt.engines.spec import random_feed, spec_from_json

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from hallo2rt.engines.attention_fusion import (  # noqa: E402  (needs onnx)
    INLINE_BELOW,
    fuse_attention,
    largest_scores_bytes,
)
from hallo2rt.engines.ort_backend import run_on_cpu  # noqa: E402
from hallo2rt.engines.parity import compare_fp32  # noqa: E402

# the engines with attention: how many of their Softmax nodes are masked (left as exported)
ATTENTION = {
    "audio_encoder": 0,
    "denoiser_step": 0,
    "face_restorer": 2,  # the temporal window's masked attention
    "reference_unet": 0,
    "vae_decoder": 0,
    "vae_encoder": 0,
}


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_fused_graph_computes_what_the_export_does(tiny_onnx, name):
    out, _ = tiny_onnx
    path = out / name / "model.onnx"
    spec = spec_from_json(json.loads((out / name / "manifest.json").read_text())["spec"])
    fused = onnx.load(str(path))
    softmaxes = _ops(fused).count("Softmax")
    count, masked = fuse_attention(fused), ATTENTION[name]
    assert count == softmaxes - masked > 0
    assert _ops(fused).count("MultiHeadAttention") == count
    assert _ops(fused).count("Softmax") == masked
    feed = {k: v.numpy() for k, v in random_feed(spec, spec.sizes("opt"), seed=3).items()}
    got = run_on_cpu(path, feed, fuse=True)
    want = run_on_cpu(path, feed, optimize=False)
    # the spec's tolerances: K/V outputs round to fp16 first (reference_unet's notes)
    compare_fp32(
        spec, [torch.from_numpy(g) for g in got], [torch.from_numpy(w) for w in want], "fused"
    )


def _attention_model(q_batch: int, k_batch: int, mask: bool = False):
    """softmax(q kᵀ) v as the TorchScript exporter writes it: q (b, 2, 8, 4), k (b, 2, 6, 4)."""
    from onnx import TensorProto, helper

    def value(name, batch, s):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 2, s, 4])

    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
    ]
    inputs = [value("q", q_batch, 8), value("k", k_batch, 6), value("v", k_batch, 6)]
    if mask:
        nodes.append(helper.make_node("Add", ["scores", "bias"], ["scores_b"]))
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 1, 8, 6]))
    nodes += [
        helper.make_node("Softmax", ["scores_b" if mask else "scores"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "attn", inputs, [value("out", q_batch, 8)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_broadcast_and_masked_attention_are_left_alone():
    for model in (_attention_model(2, 1), _attention_model(2, 2, mask=True)):
        before = model.SerializeToString()
        assert fuse_attention(model) == 0
        assert model.SerializeToString() == before


def test_a_fused_synthetic_attention_equals_softmax_attention(tmp_path):
    model = _attention_model(3, 3)
    assert fuse_attention(model) == 1
    assert "Softmax" not in _ops(model)
    path = tmp_path / "fused.onnx"
    onnx.save_model(model, str(path))
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((3, 2, s, 4), dtype=np.float32) for s in (8, 6, 6))
    (got,) = run_on_cpu(path, {"q": q, "k": k, "v": v})
    want = torch.softmax(torch.from_numpy(q) @ torch.from_numpy(k).transpose(-1, -2), -1)
    want = want @ torch.from_numpy(v)
    assert np.abs(got - want.numpy()).max() < 1e-6


def test_largest_scores_follow_the_input_shapes():
    model = _attention_model("b", "b")  # symbolic batch
    assert largest_scores_bytes(model, {"q": (5, 2, 8, 4), "k": (5, 2, 6, 4)}) == 5 * 2 * 8 * 6 * 4


def test_export_parity_runs_fused_when_scores_would_not_fit(tiny_root, tmp_path, monkeypatch):
    """Past the budget the export's ORT run fuses attention, says so, and stays within parity
    (the weights in external data, as at full size)."""
    import hallo2rt.engines.ort_backend as ort_backend
    import hallo2rt.export.onnx as onnx_export
    from hallo2rt.export.graphs import GraphShapes
    from hallo2rt.export.onnx import export_engines

    monkeypatch.setattr(ort_backend, "SCORES_BUDGET_BYTES", 0)
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    shapes = GraphShapes(size=64, frames=2)
    m = export_engines(tiny_root, tmp_path, ["vae_decoder"], shapes)["vae_decoder"]
    assert m.parity.runs["opt"].attention.startswith("fused into MultiHeadAttention")
    assert (tmp_path / "vae_decoder/model.onnx.data").is_file()
    for numbers in m.parity.runs["opt"].outputs.values():
        assert numbers["max_abs_diff"] <= numbers["rel_tol"] * numbers["max_abs_ref"]


def test_fusion_reads_shape_constants_from_external_data(tiny_onnx, tmp_path):
    """At full size even the shape constants that inference must read live in the external
    data file: they are read into the graph, the weights stay in their file, and every
    attention still fuses."""
    from hallo2rt.engines.attention_fusion import fused_bytes

    model = onnx.load(str(tiny_onnx[0] / "reference_unet/model.onnx"))
    path = tmp_path / "model.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    fused, count = fused_bytes(path)
    assert count == _ops(model).count("Softmax") > 0
    weights = [t for t in onnx.load_from_string(fused).graph.initializer if t.dims]
    large = [t for t in weights if 4 * math.prod(t.dims) >= INLINE_BELOW]
    assert large and all(t.data_location == onnx.TensorProto.EXTERNAL for t in large)


@pytest.mark.parametrize("name", ["denoiser_step", "reference_unet"])
def test_exported_attention_has_the_shape_tensorrt_documents_for_fusion(tiny_onnx, name):
    """TensorRT's "Fused Attention" guide (method 2): BMM1 -> Softmax -> BMM2 with Q and K each
    scaled by sqrt(scale) before BMM1, Q of shape [B, N, S, H]. Every attention of model.onnx
    (what TensorRT parses) has that form. Whether TensorRT then fuses it is NOT tested here."""
    model = onnx.load(str(tiny_onnx[0] / name / "model.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmaxes
    for sm in softmaxes:
        bmm1 = producer[sm.input[0]]
        assert bmm1.op_type == "MatMul", sm.name
        assert [producer[i].op_type for i in bmm1.input] == ["Mul", "Mul"], bmm1.name
        assert [c.op_type for c in consumers[sm.output[0]]] == ["MatMul"], sm.name
