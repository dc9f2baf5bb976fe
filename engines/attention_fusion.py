"""Exported attention -> ONNX Runtime's fused ``com.microsoft.MultiHeadAttention``.

Both exporters write ``scaled_dot_product_attention`` as

    MatMul(q·√scale (b, h, s, d), kᵀ·√scale (b, h, d, l)) -> Softmax(-1) -> MatMul(·, v (b,h,l,e))

and ONNX Runtime runs that as written: the score tensor b·h·s·l is materialised (the 512 px
denoiser's level-0 attention: 16 frames x 8 heads x 4096 x 8192 floats = 17.2 GB per Softmax).
TensorRT documents fusing this pattern itself (its fused-attention guide; not run here), so
``model.onnx`` keeps it; for ONNX Runtime this pass swaps each unmasked instance for
MultiHeadAttention, whose CPU kernel is a flash attention (no score tensor) and whose CUDA kernel
picks flash / memory-efficient attention (not run here).

The scales stay where the exporter put them (on q and kᵀ), so the fused node has scale 1 and
computes the same sums in another order. Masked attention (an ``Add`` before the Softmax) and
broadcasting MatMuls are left as they are.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
INLINE_BELOW = 64 << 10  # external tensors read into the graph proto: shape constants, not weights
_ITEMSIZE: dict[int, int] = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.DOUBLE: 8}

Dims = tuple  # per axis: int (static), str (symbolic) or None (unknown)


def _value_shapes(model: onnx.ModelProto) -> dict[str, tuple[Dims, int]]:
    """name -> (dims, element type) for every value shape inference can type. ONNX Runtime's
    symbolic inference follows the exporters' computed Reshape shapes (ONNX's own leaves their
    batch dims unknown); ONNX's is the fallback where it fails."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # an op it does not know: fewer shapes, fewer fusions, still correct
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    g = inferred.graph
    out = {}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        t = v.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
        )
        out[v.name] = (dims, t.elem_type)
    for init in g.initializer:
        out[init.name] = (tuple(init.dims), init.data_type)
    return out


def largest_scores_bytes(model: onnx.ModelProto, inputs: dict[str, tuple[int, ...]]) -> int:
    """Bytes of the largest Softmax output when the graph runs on inputs of these shapes (the
    score tensor that unfused attention materialises); 0 when there is none."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    for v in bound.graph.input:
        if v.name in inputs:
            for d, n in zip(v.type.tensor_type.shape.dim, inputs[v.name], strict=True):
                d.dim_value = n  # replaces a symbolic dim
    shapes = _value_shapes(bound)
    best = 0
    for node in bound.graph.node:
        dims, elem = shapes.get(node.output[0], ((), 0)) if node.op_type == "Softmax" else ((), 0)
        if dims and all(isinstance(d, int) for d in dims):
            best = max(best, _ITEMSIZE.get(elem, 4) * math.prod(dims))
    return best


def _attention_dims(a: Dims, kt: Dims, v: Dims) -> tuple[int, int] | None:
    """(heads, v head size) when q (.., s, d), kᵀ (.., d, l), v (.., l, dv) have rank 3 or 4,
    identical known leading dims (no broadcasting) and static heads / head sizes; else None."""
    if not (len(a) == len(kt) == len(v) and len(a) in (3, 4)):
        return None
    lead = len(a) - 2
    if any(d is None for d in a[:lead]) or not (a[:lead] == kt[:lead] == v[:lead]):
        return None
    if not (isinstance(a[-1], int) and a[-1] == kt[-2]) or kt[-1] is None or kt[-1] != v[-2]:
        return None
    heads = a[1] if lead == 2 else 1
    if not (isinstance(heads, int) and isinstance(v[-1], int)):
        return None
    return heads, v[-1]


class _Builder:
    """New nodes and int64 shape constants for the rewritten graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.consts: dict[tuple[int, ...], str] = {}

    def const(self, values: tuple[int, ...]) -> str:
        if values not in self.consts:
            name = f"attn_fused/shape_{'_'.join(str(x).replace('-', 'm') for x in values)}"
            shape = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)
            self.graph.initializer.append(shape)
            self.consts[values] = name
        return self.consts[values]


def _fused_nodes(
    b: _Builder, i: int, q: str, kt: str, v: str, out: str, rank: int, heads: int, dv: int
) -> list[onnx.NodeProto]:
    """Nodes computing ``out`` = attention(q, kᵀ, v) through MultiHeadAttention (scale 1)."""
    p = f"attn_fused_{i}/"
    if rank == 3:  # (B, s, d): one head per batch entry
        kt3 = helper.make_node("Transpose", [kt], [p + "k"], p + "k_t", perm=[0, 2, 1])
        mha = helper.make_node(
            "MultiHeadAttention", [q, p + "k", v], [out], p + "mha",
            domain=MS_DOMAIN, num_heads=1, scale=1.0,
        )  # fmt: skip
        return [kt3, mha]
    flat = b.const((0, 0, -1))
    nodes = [
        # q (b, h, s, d) -> (b, s, h, d) -> (b, s, h*d); likewise v
        helper.make_node("Transpose", [q], [p + "q_t"], p + "q_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [p + "q_t", flat], [p + "q"], p + "q"),
        # kᵀ (b, h, d, l) -> (b, l, h, d) -> (b, l, h*d)
        helper.make_node("Transpose", [kt], [p + "k_t"], p + "k_t", perm=[0, 3, 1, 2]),
        helper.make_node("Reshape", [p + "k_t", flat], [p + "k"], p + "k"),
        helper.make_node("Transpose", [v], [p + "v_t"], p + "v_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", [p + "v_t", flat], [p + "v"], p + "v"),
        helper.make_node(
            "MultiHeadAttention",
            [p + "q", p + "k", p + "v"],
            [p + "o"],
            p + "mha",
            domain=MS_DOMAIN,
            num_heads=heads,
            scale=1.0,
        ),  # fmt: skip
        # (b, s, h*dv) -> (b, s, h, dv) -> (b, h, s, dv), the exporter's layout
        helper.make_node("Reshape", [p + "o", b.const((0, 0, heads, dv))], [p + "o4"], p + "o4"),
        helper.make_node("Transpose", [p + "o4"], [out], p + "o_t", perm=[0, 2, 1, 3]),
    ]
    return nodes


def fuse_attention(model: onnx.ModelProto) -> int:
    """Rewrite every unmasked MatMul -> Softmax(last axis) -> MatMul of ``model`` (in place)
    into MultiHeadAttention; returns how many. Weights are not touched (external data stays
    where it is)."""
    g = model.graph
    shapes = _value_shapes(model)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for name in n.input:
            consumers[name].append(n)
    graph_outputs = {o.name for o in g.output}
    b = _Builder(g)
    replace: dict[int, list] = {}  # id(P·V MatMul) -> its replacement
    dead: set[int] = set()  # the score MatMul and Softmax of each fused pattern
    for sm in g.node:
        if sm.op_type != "Softmax":
            continue
        found = _match(sm, producer, consumers, graph_outputs, shapes)
        if found is None:
            continue
        qk, pv, dims = found
        q, kt, v = qk.input[0], qk.input[1], pv.input[1]
        replace[id(pv)] = _fused_nodes(b, len(replace), q, kt, v, pv.output[0], *dims)
        dead.update((id(qk), id(sm)))
    if not replace:
        return 0
    nodes = []
    for n in g.node:
        if id(n) in replace:
            nodes.extend(replace[id(n)])
        elif id(n) not in dead:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(replace)


def _match(sm, producer, consumers, graph_outputs, shapes):
    """(score MatMul, P·V MatMul, (rank, heads, dv)) when ``sm`` is the Softmax of a fusable
    attention, else None."""
    qk = producer.get(sm.input[0])
    users = consumers[sm.output[0]]
    if qk is None or qk.op_type != "MatMul" or len(users) != 1:
        return None
    pv = users[0]
    if pv.op_type != "MatMul" or pv.input[0] != sm.output[0]:
        return None
    if len(consumers[qk.output[0]]) != 1 or {qk.output[0], sm.output[0]} & graph_outputs:
        return None
    known = [shapes.get(name) for name in (qk.input[0], qk.input[1], pv.input[1], sm.input[0])]
    if any(k is None for k in known):
        return None
    rank = len(known[3][0])
    axis = next((a.i for a in sm.attribute if a.name == "axis"), -1)
    if axis not in (-1, rank - 1):
        return None
    dims = _attention_dims(known[0][0], known[1][0], known[2][0])
    return None if dims is None else (qk, pv, (rank, *dims))


def fused_bytes(path: Path) -> tuple[bytes, int]:
    """``path``'s graph with its attention fused, serialised without its weights: external data
    stays in ``path``'s folder (ONNX Runtime reads it from there when the session option
    ``session.model_external_initializers_file_folder_path`` names that folder, see
    ``ort_backend``); returns (model bytes, fused count)."""
    model = load_graph(path)
    count = fuse_attention(model)
    return model.SerializeToString(), count


def load_graph(path: Path, inline_below: int = INLINE_BELOW) -> onnx.ModelProto:
    """``path`` without its weights: external tensors stay in their file, except those under
    ``inline_below`` bytes (shape constants, scalars), which shape inference needs to read."""
    from onnx.external_data_helper import load_external_data_for_tensor

    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        length = next((int(e.value) for e in t.external_data if e.key == "length"), None)
        if length is not None and length < inline_below:
            load_external_data_for_tensor(t, str(path.parent))
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
    return model
