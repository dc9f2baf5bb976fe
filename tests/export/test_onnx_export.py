"""ONNX export of every engine of the tiny model: parity, I/O vs spec, chained steps, errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from hallo2rt.cli import main
from hallo2rt.engines.bank import reference_token_rows
from hallo2rt.engines.spec import ENGINE_NAMES, EngineSpec, TensorSpec
from hallo2rt.export import CheckpointError
from hallo2rt.export.graphs import GraphShapes, build_graph
from hallo2rt.export.onnx import ParityError, check_io, export_engines, parity
from hallo2rt.runtime.sampler import ddim_schedule

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
SHAPES = GraphShapes(
    size=128, frames=4, sr_frames=4, sr_overlap=2, face_size=64, max_audio_samples=32_000
)


@pytest.fixture(scope="module")
def exported(tiny_onnx):
    out, manifests = tiny_onnx
    assert all(m.shapes == dataclasses.asdict(SHAPES) for m in manifests.values())
    return tiny_onnx


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_every_engine_exports_within_parity(exported, tiny, name):
    out, manifests = exported
    manifest = json.loads((out / name / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(manifests[name].to_json()))
    spec = build_graph(name, tiny, SHAPES).spec
    assert manifest["spec"] == spec.to_json() and manifest["spec_digest"] == spec.digest()
    check_io(spec, out / name / "model.onnx")
    for output, numbers in manifest["parity"]["runs"]["opt"]["outputs"].items():
        assert numbers["max_abs_diff"] <= numbers["rel_tol"] * numbers["max_abs_ref"], output
        assert numbers["max_abs_ref"] > 0, f"{output} is all zeros: parity would be vacuous"
    assert manifest["sources"] and manifest["versions"]["onnxruntime"] == ort.__version__
    assert sorted(p.name for p in (out / name).iterdir()) == ["manifest.json", "model.onnx"]


def _session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_chained_steps_through_the_exported_graphs_match_pytorch(exported, tiny):
    """reference_unet (per video + per clip) then three denoiser_step calls in ORT reproduce the
    PyTorch denoiser's latents."""
    out, _ = exported
    ref_s, step_s = (
        _session(out / "reference_unet/model.onnx"),
        _session(out / "denoiser_step/model.onnx"),
    )
    den, ref_net = tiny["denoiser"], tiny["reference_unet"]
    g = torch.Generator().manual_seed(0)
    f, lat = SHAPES.frames, SHAPES.size // 8
    tokens = torch.randn(2, 4, 32, generator=g)
    ref_latent, motion = (
        torch.randn(1, 4, lat, lat, generator=g),
        torch.randn(2, 4, lat, lat, generator=g),
    )
    audio = torch.randn(1, f, 8, 32, generator=g)
    face = torch.randn(1, 32, lat, lat, generator=g)
    masks = [torch.rand(1, (lat >> i) ** 2, generator=g) for i in range(4)] * 3
    scale = torch.tensor([1.0, 0.8, 1.2])
    x = torch.randn(1, 4, f, lat, lat, generator=g)
    ref_rows, motion_rows = reference_token_rows(2)
    n = len(den.hooked_blocks)

    def ref_run(latents, toks):
        res = ref_s.run(None, {"latents": latents.numpy(), "tokens": toks.numpy()})
        return [torch.from_numpy(r) for r in res]

    per_video = ref_run(ref_latent.expand(2, -1, -1, -1).contiguous(), tokens[ref_rows])
    per_clip = ref_run(motion.repeat(2, 1, 1, 1), tokens[motion_rows])
    kv = [t for i in range(n) for t in per_video[3 * i : 3 * i + 2]]
    mots = [per_clip[3 * i + 2].reshape(2, 2, *per_clip[3 * i + 2].shape[1:]) for i in range(n)]
    with torch.no_grad():  # cached cross-attention K/V (the image_proj / audio_proj outputs)
        image_kv, audio_kv = den.token_kv(tokens, torch.cat([torch.zeros_like(audio), audio]))
    token_kv = [t for kv in image_kv for t in kv] + [
        t for block in audio_kv for kv in block for t in kv
    ]
    sched = ddim_schedule(3)
    x_ort = x.clone()
    for i, t in enumerate(sched.timesteps):
        feed = [
            x_ort,
            t.reshape(1),
            torch.stack([sched.a[i], sched.b[i]]),
            torch.tensor([3.5]),
            *token_kv,
            face,
            *kv,
            *mots,
            *masks,
            scale,
        ]
        names = [i.name for i in step_s.get_inputs()]
        x_ort = torch.from_numpy(
            step_s.run(None, {k: v.numpy() for k, v in zip(names, feed, strict=True)})[0]
        )
    with torch.no_grad():
        bank_ref = ref_net(ref_latent.expand(2, -1, -1, -1), torch.tensor(0), tokens[ref_rows])
        bank_mot = ref_net(motion.repeat(2, 1, 1, 1), torch.tensor(0), tokens[motion_rows])
        ref_kv = den.reference_kv(bank_ref)
        mots_t = [b.reshape(2, 2, *b.shape[1:]) for b in bank_mot]
        audio2 = torch.cat([torch.zeros_like(audio), audio])
        face2 = torch.cat([torch.zeros_like(face), face])[:, :, None]
        x_t = x.clone()
        for i, t in enumerate(sched.timesteps):
            v = den(
                torch.cat([x_t, x_t]),
                t,
                tokens,
                audio2,
                face2,
                ref_kv,
                mots_t,
                masks[:4],
                masks[4:8],
                masks[8:],
                scale,
            )
            x_t = sched.a[i] * x_t + sched.b[i] * (v[:1] + 3.5 * (v[1:] - v[:1]))
    err = (x_ort - x_t).abs().max() / x_t.abs().max()
    assert err < 1e-3, err  # three steps through fp16-rounded reference K/V (see the spec)


def test_parity_failure_names_the_output(exported, tiny):
    out, _ = exported
    graph = build_graph("image_proj", tiny, SHAPES)
    args = graph.make_inputs(graph.spec.sizes(), torch.Generator().manual_seed(0))
    broken = copy.deepcopy(graph)
    with torch.no_grad():
        broken.module.proj.norm.bias.add_(1.0)
    with pytest.raises(ParityError, match="image_tokens"):
        parity(broken, out / "image_proj/model.onnx", args)


def test_missing_or_corrupt_checkpoints_leave_no_output(tiny_root, tmp_path):
    root = tmp_path / "pretrained_models"
    shutil.copytree(tiny_root, root)
    (root / "hallo2/net.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        export_engines(root, tmp_path / "out1", ["image_proj"], SHAPES)
    (root / "hallo2/net.pth").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        export_engines(root, tmp_path / "out2", ["denoiser_step"], SHAPES)
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_feed_validation_names_every_problem():
    spec = EngineSpec(
        "x",
        (TensorSpec("a", "float32", (1, "n")), TensorSpec("b", "int64", (2,))),
        (TensorSpec("y", "float32", (1, "n")),),
        {"n": (1, 4, 8)},
    )
    spec.validate_feed({"a": torch.zeros(1, 5), "b": torch.zeros(2, dtype=torch.int64)})
    with pytest.raises(ValueError) as err:
        spec.validate_feed({"a": torch.zeros(1, 9, dtype=torch.float16), "c": torch.zeros(1)})
    msg = str(err.value)
    assert "missing input 'b'" in msg and "unexpected input 'c'" in msg
    assert "dtype torch.float16" in msg and "(n) is 9" in msg
    with pytest.raises(ValueError, match="no profile"):
        EngineSpec("z", (TensorSpec("a", "float32", ("m",)),), ())


def test_export_cli(tiny_root, tmp_path, capsys):
    argv = [
        "export",
        "--checkpoints",
        str(tiny_root),
        "--out",
        str(tmp_path / "e"),
        "--size",
        "64",
        "--only",
        "image_proj,face_locator",
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["face_locator", "image_proj"]
    assert "parity max rel" in capsys.readouterr().err
    assert main(argv[:-1] + ["nonsense"]) == 1
    assert "unknown engines" in capsys.readouterr().err


def test_onnx_outputs_are_finite_at_the_profile_extremes(exported, tiny):
    out, _ = exported
    graph = build_graph("vae_encoder", tiny, SHAPES)
    sess = _session(out / "vae_encoder/model.onnx")
    for which in ("min", "max"):
        (pixels,) = graph.make_inputs(graph.spec.sizes(which), torch.Generator().manual_seed(1))
        (latents,) = sess.run(None, {"pixels": pixels.numpy()})
        assert latents.shape[0] == pixels.shape[0] and np.isfinite(latents).all()


def test_large_models_get_one_external_data_file(tiny_root, tmp_path, monkeypatch):
    import hallo2rt.export.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)  # treat every model as > 2 GB
    manifest = export_engines(tiny_root, tmp_path, ["face_locator"], SHAPES)["face_locator"]
    files = sorted(p.name for p in (tmp_path / "face_locator").iterdir())
    assert files == ["manifest.json", "model.onnx", "model.onnx.data"]
    assert (tmp_path / "face_locator/model.onnx").stat().st_size < 100_000  # weights are outside
    assert manifest.parity.runs["opt"].outputs["face_feature"]["rel"] < 1e-4  # ORT found the data


def _input_dtypes(path, op_types):
    """(op type, dtype of its first input) for every node of the given types."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    name = onnx.TensorProto.DataType.Name
    return [(n.op_type, name(types.get(n.input[0], 0))) for n in g.node if n.op_type in op_types]


@pytest.mark.parametrize("name", ["audio_proj", "image_proj", "vae_decoder", "vae_encoder"])
def test_fp16_export_keeps_norms_and_the_audio_gemm_in_fp32(tiny_root, tmp_path, name):
    manifest = export_engines(tiny_root, tmp_path, [name], SHAPES, precision="fp16")[name]
    assert manifest.precision == "fp16"
    assert all(t.dtype != "float32" for t in manifest.spec.inputs)
    for output, numbers in manifest.parity.runs["opt"].outputs.items():
        assert numbers["cosine"] >= 0.999, output
    ops = _input_dtypes(
        tmp_path / name / "model.onnx",
        {
            "Conv",
            "MatMul",
            "Gemm",
            "InstanceNormalization",
            "GroupNormalization",
            "LayerNormalization",
        },
    )
    norms = [d for op, d in ops if op.endswith("Normalization")]
    assert norms and set(norms) == {"FLOAT"}  # statistics in fp32
    compute = {d for op, d in ops if op in ("Conv", "MatMul")}
    assert "FLOAT16" in compute or name in ("audio_proj", "image_proj")  # heavy ops in fp16
    if name == "audio_proj":
        gemms = [d for op, d in ops if op == "Gemm"]
        assert gemms[0] == "FLOAT" and "FLOAT16" in gemms[1:]  # K = 46080 GEMM in fp32


def test_fp16_cli_and_fp32_only_audio_encoder(tiny_root, tmp_path, capsys):
    argv = [
        "export",
        "--checkpoints",
        str(tiny_root),
        "--out",
        str(tmp_path),
        "--size",
        "64",
        "--only",
        "image_proj,audio_encoder",
        "--precision",
        "fp16",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "image_proj      fp16" in err and "audio_encoder   fp32" in err


@pytest.mark.slow
def test_fp16_denoiser_step(tiny_root, tmp_path):
    """~3 min (the dynamo export of the step graph); run with -m slow."""
    shapes = GraphShapes(size=64, frames=16)
    m = export_engines(tiny_root, tmp_path, ["denoiser_step"], shapes, "fp16")["denoiser_step"]
    assert m.parity.runs["opt"].outputs["next_latents"]["cosine"] >= 0.999


def test_fp16_export_swaps_weights_to_half_and_back_exactly():
    """The fp16 export halves the weights in place for its duration (no second full-size copy);
    modules sharing them get their fp32 values back bit for bit."""
    from hallo2rt.export.onnx import _half_weights

    shared = torch.nn.Linear(3, 3)
    a, b = torch.nn.Sequential(shared, torch.nn.LayerNorm(3)), torch.nn.Sequential(shared)
    a.register_buffer("table", torch.randn(4))
    before = {k: v.clone() for k, v in a.state_dict().items()}
    with _half_weights(a) as m:
        assert m is a and all(v.dtype == torch.float16 for v in a.state_dict().values())
        assert b[0].weight.dtype == torch.float16  # the shared weight too, for now
    after = a.state_dict()
    assert all(
        after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items()
    )
    assert b[0].weight.dtype == torch.float32
