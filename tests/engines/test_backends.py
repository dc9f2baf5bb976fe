"""Engines of the tiny model: ORT and torch backends end to end, manifests, cache keys, stale and
corrupt engines, the TensorRT build plan (no TensorRT needed) and the TensorRT run (skipped where
it does not import)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from hallo2rt.engines.build import BuildConfig, build_engines, check_engine
from hallo2rt.engines.engine import open_engine, verify_artifact
from hallo2rt.engines.manifest import (
    EngineError,
    StaleEngineError,
    cache_key,
    environment,
    read_manifest,
)
from hallo2rt.engines.ort_backend import OrtEngine
from hallo2rt.engines.parity import ParityError, compare_fp32
from hallo2rt.engines.spec import ENGINE_NAMES, random_feed, spec_from_json
from hallo2rt.engines.tensorrt_backend import build_plan, plan_name

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
# the engines whose exports hold attention (tests/engines/test_attention_fusion.py)
ATTENTION_ENGINES = (
    "audio_encoder",
    "denoiser_step",
    "face_restorer",
    "reference_unet",
    "vae_decoder",
    "vae_encoder",
)


@pytest.fixture(scope="module")
def ort_engines(tiny_onnx, tmp_path_factory):
    onnx_dir, _ = tiny_onnx
    out = tmp_path_factory.mktemp("ort_engines")
    return out, build_engines(onnx_dir, out, BuildConfig("onnxruntime"))


@pytest.fixture(scope="module")
def torch_engines(tiny_onnx, tmp_path_factory):
    onnx_dir, _ = tiny_onnx
    out = tmp_path_factory.mktemp("torch_engines")
    return out, build_engines(onnx_dir, out, BuildConfig("torch"))


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_ort_build_checks_every_engine_and_describes_it(ort_engines, tiny_onnx, name):
    out, manifests = ort_engines
    m = json.loads((out / name / "manifest.json").read_text())
    export = tiny_onnx[1][name]
    assert m["backend"] == "onnxruntime" and m["engine"] == name
    assert m["onnx"]["sha256"] == export.onnx_sha256 and m["manifest_version"] == 2
    assert m["spec"] == export.spec.to_json() and m["source_sha256"] == export.source_sha256
    assert m["environment"]["onnxruntime"] == ort.__version__
    assert (out / name / m["artifact"]).stat().st_size == m["artifact_bytes"]
    verify_artifact(out / name, read_manifest(out / name))
    for size, result in m["parity"]["runs"].items():
        for output, n in result["outputs"].items():
            assert n["max_abs_ref"] > 0, f"{output} all zeros: the check would be vacuous"
            assert n["max_abs_diff"] <= n["rel_tol"] * n["max_abs_ref"], (size, output)
    spec = spec_from_json(m["spec"])
    assert set(m["parity"]["runs"]) == ({"opt", "min"} if spec.profiles else {"opt"})
    assert read_manifest(out / name).to_json() == m  # the typed manifest round-trips
    assert not list(out.glob(".*.partial"))
    # the artifact runs ORT's fused attention wherever the export has (unmasked) attention
    fused = int(m["attention"].split()[0])
    ops = [n.op_type for n in onnx.load(str(out / name / m["artifact"])).graph.node]
    assert ops.count("MultiHeadAttention") == fused
    assert (fused > 0) == (name in ATTENTION_ENGINES)


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_ort_and_torch_backends_agree_on_the_same_feed(ort_engines, torch_engines, name):
    with (
        open_engine(ort_engines[0] / name) as a,
        open_engine(torch_engines[0] / name) as b,
    ):
        feed = random_feed(a.spec, a.spec.sizes("max"), seed=7)
        got, want = a.infer(feed), b.infer(feed)
        assert list(got) == [t.name for t in a.spec.outputs]
        numbers = compare_fp32(
            a.spec,
            [got[t.name] for t in a.spec.outputs],
            [want[t.name] for t in a.spec.outputs],
            "ORT vs torch",
        )
    assert all(n["max_abs_ref"] > 0 for n in numbers.values())


def test_engine_checks_state_and_feed(ort_engines):
    engine = open_engine(ort_engines[0] / "image_proj")
    feed = random_feed(engine.spec, {})
    with pytest.raises(RuntimeError, match="not open"):
        engine.infer(feed)
    with engine:
        with pytest.raises(ValueError, match="embedding: dim 1"):
            engine.infer({"embedding": torch.zeros(1, 3)})
        with pytest.raises(ValueError, match="missing input 'embedding'"):
            engine.infer({})
        first = engine.infer(feed)["image_tokens"].clone()
        assert torch.equal(engine.infer(feed)["image_tokens"], first)  # deterministic
    with pytest.raises(RuntimeError, match="not open"):
        engine.infer(feed)


def test_cache_key_changes_with_spec_flags_onnx_and_versions(ort_engines):
    m = json.loads((ort_engines[0] / "denoiser_step/manifest.json").read_text())
    spec = spec_from_json(m["spec"])
    build, env = m["build"], m["environment"]
    key = cache_key(spec.digest(), m["onnx"]["sha256"], build, env)
    assert key == m["cache_key"]
    other_spec = replace(spec, notes=spec.notes + " changed")
    assert cache_key(other_spec.digest(), m["onnx"]["sha256"], build, env) != key
    assert cache_key(spec.digest(), "0" * 64, build, env) != key
    assert cache_key(spec.digest(), m["onnx"]["sha256"], {**build, "fp16": True}, env) != key
    newer = {**env, "onnxruntime": "99.0"}
    assert cache_key(spec.digest(), m["onnx"]["sha256"], build, newer) != key
    # what the backend does not depend on does not change the key
    assert cache_key(spec.digest(), m["onnx"]["sha256"], build, {**env, "python": "0"}) == key
    trt_build = {**build, "backend": "tensorrt", "device": "cuda"}
    h100 = {**env, "tensorrt": "10.13", "gpu": "NVIDIA H100", "compute_capability": "9.0"}
    k1 = cache_key(spec.digest(), m["onnx"]["sha256"], trt_build, h100)
    k2 = cache_key(spec.digest(), m["onnx"]["sha256"], trt_build, {**h100, "gpu": "NVIDIA L4"})
    assert k1 != k2


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit(directory, **changes):
    path = directory / "manifest.json"
    m = json.loads(path.read_text())
    for dotted, value in changes.items():
        node = m
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path.write_text(json.dumps(m))
    return m


def test_stale_engine_is_refused_naming_the_field_and_the_rebuild(ort_engines, tmp_path):
    d = _copy(ort_engines[0] / "image_proj", tmp_path / "image_proj")
    _edit(d, environment__onnxruntime="0.1.0")
    with pytest.raises(StaleEngineError, match=r"onnxruntime: built for '0\.1\.0'.*hallo2rt build"):
        open_engine(d)
    # a TensorRT engine for another GPU (checked before TensorRT is imported)
    _edit(
        d,
        backend="tensorrt",
        build__device="cuda",
        environment__gpu="NVIDIA H100 80GB HBM3",
        environment__compute_capability="9.0",
        environment__tensorrt="10.13.0",
    )
    with pytest.raises(StaleEngineError, match="gpu: built for 'NVIDIA H100") as err:
        open_engine(d, device="cuda")
    assert "tensorrt: built for '10.13.0'" in str(err.value)
    with pytest.raises(StaleEngineError, match="built for cuda, not cpu"):
        open_engine(d, device="cpu")


def test_spec_the_caller_expects_must_match(ort_engines):
    engine = open_engine(ort_engines[0] / "image_proj")
    other = replace(engine.spec, notes="another version")
    with pytest.raises(EngineError, match="another spec"):
        open_engine(ort_engines[0] / "image_proj", expect=other)
    open_engine(ort_engines[0] / "image_proj", expect=engine.spec)


def test_corrupt_engines_are_reported_as_such(ort_engines, tmp_path):
    from hallo2rt.engines.doctor import engine_states

    root = tmp_path / "engines"
    d = _copy(ort_engines[0] / "face_locator", root / "face_locator")
    artifact = d / "model.ort.onnx"
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineError, match="corrupt or truncated"):
        open_engine(d)
    artifact.write_bytes(bytes(len(data)))  # right size, garbage: corrupted in place
    with pytest.raises(EngineError, match="does not match the hash"):
        verify_artifact(d, read_manifest(d))
    with pytest.raises(EngineError, match="does not match the hash"):
        open_engine(d)  # changed since its last check: hashed at open, not run as garbage
    unchecked = OrtEngine(d, read_manifest(d), torch.device("cpu"))
    with pytest.raises(EngineError, match="could not be loaded by onnxruntime"), unchecked:
        pass
    lines, ok = engine_states(root, verify=True)
    assert not ok and "CORRUPT" in lines[0]
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(EngineError, match="manifest.json is corrupt"):
        open_engine(d)
    with pytest.raises(EngineError, match="ONNX export, not a built engine"):
        open_engine(_export_dir(root))


def _export_dir(root):
    d = root / "export_only"
    d.mkdir()
    spec = {"name": "x", "inputs": [], "outputs": []}  # an export: no backend
    (d / "manifest.json").write_text(json.dumps({"engine": "x", "spec": spec, "precision": "fp32"}))
    return d


def test_modified_onnx_is_refused_and_failed_builds_leave_nothing(tiny_onnx, tmp_path):
    onnx_dir = tmp_path / "onnx"
    _copy(tiny_onnx[0] / "image_proj", onnx_dir / "image_proj")
    _copy(tiny_onnx[0] / "face_locator", onnx_dir / "face_locator")
    with open(onnx_dir / "face_locator/model.onnx", "ab") as f:
        f.write(b"\0")
    out = tmp_path / "out"
    with pytest.raises(EngineError, match="does not match the hash its export recorded"):
        build_engines(onnx_dir, out, BuildConfig("onnxruntime"))
    assert not out.exists()  # every export is checked before anything is built
    with pytest.raises(EngineError, match="no export of"):
        build_engines(onnx_dir, out, BuildConfig("onnxruntime"), only=["vae_decoder"])


def test_a_failed_check_leaves_no_engine(tiny_onnx, tmp_path, monkeypatch):
    import hallo2rt.engines.build as build_mod

    def disagree(*args, **kwargs):
        raise ParityError("image_tokens disagrees (test)")

    monkeypatch.setattr(build_mod, "check_engine", disagree)
    out = tmp_path / "out"
    with pytest.raises(ParityError, match="image_tokens"):
        build_engines(tiny_onnx[0], out, BuildConfig("onnxruntime"), only=["image_proj"])
    assert not out.exists()  # no engine, no .partial, and not the folder it created either
    out.mkdir()
    with pytest.raises(ParityError, match="image_tokens"):
        build_engines(tiny_onnx[0], out, BuildConfig("onnxruntime"), only=["image_proj"])
    assert list(out.iterdir()) == []  # a folder that was there stays


def test_check_engine_catches_a_wrong_engine(ort_engines, tiny_onnx):
    """The build check is not vacuous: an engine whose outputs are off by 1% of their range
    fails it, naming the output."""
    graph = tiny_onnx[0] / "image_proj/model.onnx"
    with open_engine(ort_engines[0] / "image_proj") as engine:
        check_engine(engine, graph, engine.spec, fp16=False)
        real = engine._infer
        engine._infer = lambda feed: {k: v + 1e-2 * v.abs().max() for k, v in real(feed).items()}
        with pytest.raises(ParityError, match="image_tokens"):
            check_engine(engine, graph, engine.spec, fp16=False)


def test_fp16_export_builds_an_fp16_ort_engine(tiny_root, tmp_path):
    from hallo2rt.export.graphs import GraphShapes
    from hallo2rt.export.onnx import export_engines

    onnx_dir = tmp_path / "onnx16"
    shapes = GraphShapes(
        size=128, frames=4, sr_frames=4, sr_overlap=2, face_size=64, max_audio_samples=32_000
    )
    export_engines(tiny_root, onnx_dir, ["image_proj", "vae_encoder"], shapes, "fp16")
    ms = build_engines(onnx_dir, tmp_path / "e16", BuildConfig("onnxruntime", fp16=True))
    for m in ms.values():
        assert m.precision == "fp16" and m.spec.inputs[0].dtype == "float16"
        for result in m.parity.runs.values():
            assert all(n["cosine"] >= 0.999 for n in result.outputs.values())


def test_ort_build_of_a_large_export_keeps_one_external_data_file(tiny_root, tmp_path, monkeypatch):
    """A > 2 GB export (external data) builds through the fused-attention bytes: ORT reads the
    weights from the export's folder and writes the artifact's own data file."""
    import hallo2rt.export.onnx as onnx_export
    from hallo2rt.export.graphs import GraphShapes
    from hallo2rt.export.onnx import export_engines

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)  # treat it as > 2 GB
    onnx_dir = tmp_path / "onnx"
    export_engines(tiny_root, onnx_dir, ["vae_decoder"], GraphShapes(size=64, frames=2))
    assert (onnx_dir / "vae_decoder/model.onnx.data").is_file()
    m = build_engines(onnx_dir, tmp_path / "built", BuildConfig("onnxruntime"))["vae_decoder"]
    assert m.artifact_data == ["model.ort.onnx.data"] and m.extra["attention"].startswith("1 fused")
    assert (tmp_path / "built/vae_decoder/model.ort.onnx.data").stat().st_size > 0
    for n in m.parity.runs["opt"].outputs.values():
        assert n["max_abs_diff"] <= n["rel_tol"] * n["max_abs_ref"]


def test_fp16_flag_on_an_fp32_export_says_how_to_fix(tiny_onnx, tmp_path):
    with pytest.raises(EngineError, match="--precision fp16"):
        build_engines(
            tiny_onnx[0],
            tmp_path / "x",
            BuildConfig("onnxruntime", fp16=True),
            only=["vae_encoder"],
        )
    assert not (tmp_path / "x" / "vae_encoder").exists()


def test_torch_backend_finds_moved_checkpoints_and_refuses_other_weights(
    tiny_onnx, tiny_root, tmp_path
):
    moved = _copy(tiny_root, tmp_path / "moved")
    ms = build_engines(
        tiny_onnx[0], tmp_path / "t", BuildConfig("torch"), only=["face_locator"], checkpoints=moved
    )
    assert ms["face_locator"].checkpoints == str(moved.resolve())
    net = moved / "hallo2" / "net.pth"
    net.write_bytes(net.read_bytes() + b"\0")
    with pytest.raises(EngineError, match="not the file face_locator was exported from"):
        with open_engine(tmp_path / "t" / "face_locator"):
            pass


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(backend="nope"), "expected onnxruntime, tensorrt or torch"),
        (dict(backend="tensorrt"), "use --device cuda"),
        (dict(backend="onnxruntime", int8=True), "TensorRT builder flags"),
        (dict(backend="torch", cuda_graph=True), "CUDA provider"),
        (dict(backend="onnxruntime", compile=True), "torch backend"),
        (dict(backend="torch", fp16=True), "need a GPU"),
        (dict(backend="onnxruntime", device="tpu"), "expected cpu or cuda"),
    ],
)
def test_build_config_rejects_what_cannot_apply(kw, message):
    with pytest.raises(ValueError, match=message):
        BuildConfig(**kw)


def test_environment_reports_this_machine():
    env = environment("cpu", "onnxruntime")
    assert env["torch"] == torch.__version__ and env["onnxruntime"] == ort.__version__
    assert env["gpu"] is None and "tensorrt" not in env


# --- TensorRT: the build plan is pure and tested here; building and running need TensorRT ---


def _spec(tiny_onnx, name):
    return tiny_onnx[1][name].spec


def test_trt_plan_static_fp32_is_strongly_typed_without_tf32(tiny_onnx):
    plan = build_plan(
        _spec(tiny_onnx, "denoiser_step"), BuildConfig("tensorrt", "cuda"), "fp32", "9.0"
    )
    assert plan.strongly_typed and plan.flags == () and plan.clear_flags == ("TF32",)
    assert plan.profiles == {} and plan.precision == "fp32" and plan.workspace_bytes == 0


def test_trt_plan_profiles_follow_the_spec(tiny_onnx):
    spec = _spec(tiny_onnx, "audio_encoder")
    cfg = BuildConfig("tensorrt", "cuda", fp16=True, workspace_gb=4)
    plan = build_plan(spec, cfg, "fp32", "8.9")
    lo, opt, hi = spec.profiles["samples"]
    assert plan.profiles == {"waveform": ((1, lo), (1, opt), (1, hi))}
    # the audio encoder and CodeFormer stay fp32 in an fp16 build (FP32_ONLY), as officially
    assert plan.strongly_typed and plan.flags == () and plan.precision == "fp32"
    rest = build_plan(_spec(tiny_onnx, "face_restorer"), cfg, "fp32", "8.9")
    assert rest.flags == () and rest.precision == "fp32" and rest.clear_flags == ("TF32",)
    rows = _spec(tiny_onnx, "reference_unet").profiles["rows"]
    ref = build_plan(_spec(tiny_onnx, "reference_unet"), cfg, "fp32", "8.9")
    assert ref.profiles["latents"][0][0] == rows[0] and ref.profiles["tokens"][2][0] == rows[2]
    assert not ref.strongly_typed and ref.flags == ("FP16",) and ref.clear_flags == ()
    assert ref.workspace_bytes == 4 << 30 and ref.precision == "fp16"
    bg = _spec(tiny_onnx, "bg_upsampler")  # both spatial dims dynamic: frames and face crops
    h = bg.profiles["height"]
    assert build_plan(bg, cfg, "fp32", "8.9").profiles == {
        "image": tuple((1, 3, h[i], h[i]) for i in range(3))
    }


def test_trt_plan_fp16_export_and_quantisation_flags(tiny_onnx):
    spec = _spec(tiny_onnx, "vae_decoder")
    plan = build_plan(spec, BuildConfig("tensorrt", "cuda"), "fp16", "9.0")
    assert plan.strongly_typed and plan.flags == () and plan.precision == "fp16"
    with pytest.raises(ValueError, match="compute capability >= 8.9"):
        build_plan(spec, BuildConfig("tensorrt", "cuda", fp8=True), "fp32", "8.0")
    with pytest.raises(ValueError, match="from an fp32 export"):
        build_plan(spec, BuildConfig("tensorrt", "cuda", int8=True), "fp16", "9.0")
    plan = build_plan(spec, BuildConfig("tensorrt", "cuda", fp16=True, fp8=True), "fp32", "9.0")
    assert plan.flags == ("FP16", "FP8")
    assert plan_name("10.13.0.35") == "model.trt10.13.0.35.plan"


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_builds_and_runs_every_engine(tiny_onnx, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed: NOT tested")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TensorRT NOT tested")
    ms = build_engines(tiny_onnx[0], tmp_path / "trt", BuildConfig("tensorrt", "cuda"))
    for name, m in ms.items():
        assert m.artifact.startswith("model.trt"), name
        with open_engine(tmp_path / "trt" / name) as engine:
            out = engine.infer(random_feed(engine.spec, engine.spec.sizes(), device="cuda"))
            assert all(torch.isfinite(v).all() for v in out.values())
