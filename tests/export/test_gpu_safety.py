"""GPU defects caught on the CPU: every export wrapper on the meta device (a tensor a forward
creates on the CPU meets meta weights and raises, as it would meet CUDA weights), and every
exported graph's I/O against its spec (names, element types, static and dynamic dims)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hallo2rt.engines.spec import ENGINE_NAMES
from hallo2rt.export import load_pretrained
from hallo2rt.export.graphs import GraphShapes, build_graph, fit_shapes
from hallo2rt.export.onnx import io_problems

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def meta_tiny(tiny_root):
    """A private copy of the tiny model (the wrappers are moved to meta, in place)."""
    return load_pretrained(tiny_root)


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_every_wrapper_runs_on_the_meta_device(meta_tiny, tiny_onnx, name):
    shapes = GraphShapes(**tiny_onnx[1]["denoiser_step"].shapes)
    graph = build_graph(name, meta_tiny, fit_shapes(shapes, meta_tiny))
    args = graph.make_inputs(graph.spec.sizes("opt"), torch.Generator().manual_seed(0))
    module = graph.module.to("meta")
    with torch.no_grad():
        outs = module(*(a.to("meta") for a in args))
    assert len(outs) == len(graph.spec.outputs)
    assert all(o.device.type == "meta" for o in outs)


def _graph(tiny_onnx, name):
    return onnx.load(str(tiny_onnx[0] / name / "model.onnx"), load_external_data=False).graph


def test_every_exported_graph_has_its_specs_names_dtypes_and_dims(tiny_onnx):

    for name, manifest in tiny_onnx[1].items():
        assert io_problems(manifest.spec, _graph(tiny_onnx, name)) == [], name


def test_io_check_names_a_dtype_or_dim_that_differs(tiny_onnx):

    spec = tiny_onnx[1]["vae_encoder"].spec  # pixels: (images, 3, S, S)
    graph = _graph(tiny_onnx, "vae_encoder")
    pixels = spec.inputs[0]
    half = dataclasses.replace(spec, inputs=(dataclasses.replace(pixels, dtype="float16"),))
    assert io_problems(half, graph) == ["input pixels: ONNX elem_type 1, spec float16"]
    static = dataclasses.replace(pixels, dims=(2, *pixels.dims[1:]))  # the graph's is dynamic
    problems = io_problems(dataclasses.replace(spec, inputs=(static,)), graph)
    assert len(problems) == 1 and problems[0].startswith("input pixels: dims")


def test_fp16_denoiser_step_keeps_its_ddim_coefficients_fp32(tiny_onnx):
    """The official scheduler's coefficients are fp32 scalars; an fp16 engine would round them
    to 2^-11 (GPU_REVIEW: fp16 precision of the DDIM coefficients)."""
    spec16 = tiny_onnx[1]["denoiser_step"].spec.with_precision("fp16")
    dtypes = {t.name: t.dtype for t in spec16.inputs}
    assert dtypes["coef"] == dtypes["cfg_scale"] == "float32"
    assert dtypes["latents"] == "float16" and spec16.outputs[0].dtype == "float16"
