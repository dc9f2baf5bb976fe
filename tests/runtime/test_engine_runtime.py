"""Generation on built engines (`generate --engines`) vs the PyTorch path, on the tiny model."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from hallo2rt.assemble import session_from_pretrained
from hallo2rt.cli import main
from hallo2rt.demo import ASSETS
from hallo2rt.engines.build import BuildConfig, build_engines
from hallo2rt.export.graphs import GraphShapes
from hallo2rt.runtime.pipeline import RunConfig, generate
from hallo2rt.runtime.portrait import build_portrait, load_image
from hallo2rt.runtime.sampler import ddim_schedule
from hallo2rt.runtime.session import Session
from hallo2rt.runtime.steploop import StepLoop, step_loop

from .media_helpers import write_audio

pytest.importorskip("onnxruntime")
av = pytest.importorskip("av")
FACE = (180, 78, 262, 182)


@pytest.fixture(scope="module")
def ort_dir(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort_generation")
    build_engines(tiny_onnx[0], out, BuildConfig("onnxruntime"), only=None)
    return out


@pytest.fixture(scope="module")
def torch_dir(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("torch_generation")
    build_engines(tiny_onnx[0], out, BuildConfig("torch"), only=["audio_encoder"])
    return out


def _portrait(size, dim=64):
    rgb = load_image(ASSETS / "portrait.jpg")
    return build_portrait(rgb, size, FACE, np.random.default_rng(0).standard_normal(dim))


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR of (N, H, W, 3) uint8 frames."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))


def test_engines_match_the_pytorch_path_frame_by_frame(ort_dir, tiny, tiny_onnx):
    shapes = GraphShapes(**tiny_onnx[1]["denoiser_step"].shapes)
    reference = session_from_pretrained(tiny, shapes)
    engines = Session.open(ort_dir)
    assert (engines.size, engines.frames, engines.motion_frames) == (128, 4, 2)
    assert engines.describe()["denoiser_step"] == "onnxruntime fp32 cpu"
    portrait = _portrait(engines.size)
    feats = torch.randn(12, 2, 32, generator=torch.Generator().manual_seed(3))
    cfg = RunConfig(steps=3, frames=4, pose_weight=0.8, lip_weight=1.2)
    with reference:
        want = np.concatenate([c.frames for c in generate(reference, portrait, feats, cfg)])
    with engines:
        got = np.concatenate([c.frames for c in generate(engines, portrait, feats, cfg)])
    assert got.shape == want.shape == (12, 128, 128, 3)
    psnr = _psnr(got, want)
    # 3 clips; the random tiny net amplifies float differences from clip to clip (~5 dB per
    # clip measured: 74, 65, 60 dB), which is why the comparison stops at 3 clips
    assert psnr.min() >= 40, psnr
    assert not np.array_equal(got[:4], got[4:8])  # the frames are not trivially constant


def test_step_loop_runs_eagerly_on_the_cpu_and_says_why(ort_dir):
    with Session.open(ort_dir) as session:
        loop = StepLoop(session, ddim_schedule(3), 3.5)
        assert loop.mode == "eager (CUDA graphs need a GPU)"
        assert StepLoop(session, ddim_schedule(3), 3.5, cuda_graph=False).mode.startswith("eager")


def _argv(ort_dir, tmp_path, audio, out, *extra):
    np.save(tmp_path / "emb.npy", np.random.default_rng(1).standard_normal(64).astype(np.float32))
    return [
        "generate",
        "--engines",
        str(ort_dir),
        "--image",
        str(ASSETS / "portrait.jpg"),
        "--audio",
        str(audio),
        "--out",
        str(out),
        "--face-box",
        ",".join(map(str, FACE)),
        "--face-embedding",
        str(tmp_path / "emb.npy"),
        "--frames",
        "4",
        "--steps",
        "2",
        "--quiet",
        *extra,
    ]


def test_generate_on_engines_writes_every_frame_and_the_audio(ort_dir, torch_dir, tmp_path):
    seconds = 0.9
    write_audio(tmp_path / "a.wav", seconds, rate=22050)
    out = tmp_path / "out.mp4"
    mixed = ["--engine", f"audio_encoder={torch_dir}"]  # a torch audio encoder beside ORT
    assert main(_argv(ort_dir, tmp_path, tmp_path / "a.wav", out, *mixed)) == 0
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.width, v.height) == (128, 128) and a.rate == 22050
        frames = sum(1 for _ in c.decode(v))
    assert frames == math.ceil(seconds * 25)


def _probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        audio = [(a.rate, float(a.duration * a.time_base)) for a in c.streams.audio]
        return (v.width, v.height), sum(1 for _ in c.decode(v)), audio


def test_generate_upscale_2_and_upscale_an_existing_video_on_engines(ort_dir, tmp_path, capsys):
    """The SR engines (ONNX Runtime, tiny random weights) end to end: every frame, twice the
    size, the audio kept; a session without the SR engines says what to build."""
    seconds = 1.1
    write_audio(tmp_path / "a.wav", seconds, rate=16000)
    frames = math.ceil(seconds * 25)
    big = tmp_path / "big.mp4"
    argv = _argv(ort_dir, tmp_path, tmp_path / "a.wav", big, "--upscale", "2", "--fidelity", "1")
    assert main(argv) == 0
    size, n, audio = _probe(big)
    assert size == (256, 256) and n == frames and audio and audio[0][0] == 16000
    small = tmp_path / "small.mp4"
    assert main(_argv(ort_dir, tmp_path, tmp_path / "a.wav", small)) == 0
    up = tmp_path / "up.mp4"
    argv = ["upscale", "--engines", str(ort_dir), "--in", str(small), "--out", str(up)]
    assert main([*argv, "--upscale", "2", "--quiet"]) == 0
    size, n, audio = _probe(up)
    assert size == (256, 256) and n == frames and audio
    assert abs(audio[0][1] - _probe(small)[2][0][1]) < 0.1
    # a build without the SR engines
    partial = tmp_path / "no_sr"
    partial.mkdir()
    for name in ("face_detector", "face_parser", "bg_upsampler", "face_restorer"):
        assert (ort_dir / name).is_dir()
    for d in ort_dir.iterdir():
        if d.name not in ("face_detector",):
            (partial / d.name).symlink_to(d)
    capsys.readouterr()
    assert main(["upscale", "--engines", str(partial), "--in", str(small), "--out", str(up)]) == 1
    assert "face_detector" in capsys.readouterr().err


def test_a_run_that_does_not_fit_the_engines_fails_before_writing(ort_dir, tmp_path, capsys):
    write_audio(tmp_path / "a.wav", 0.5)
    out = tmp_path / "o.mp4"
    argv = _argv(ort_dir, tmp_path, tmp_path / "a.wav", out)
    argv[argv.index("--frames") + 1] = "16"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "16 frames per clip (the engines take 4)" in err and "hallo2rt export" in err
    assert not out.exists()
    assert main(_argv(ort_dir, tmp_path, tmp_path / "a.wav", out, "--dtype", "fp16")) == 1
    assert "precision they were exported and built with" in capsys.readouterr().err
    assert main(_argv(ort_dir, tmp_path, tmp_path / "a.wav", out, "--engine", "vae=x")) == 1
    assert "unknown engines ['vae']" in capsys.readouterr().err


def test_a_session_refuses_engines_that_do_not_fit_together(ort_dir):
    from hallo2rt.engines.engine import open_engine
    from hallo2rt.engines.manifest import EngineError
    from hallo2rt.engines.spec import GENERATION, TensorSpec

    engines = {n: open_engine(ort_dir / n) for n in GENERATION}
    session = Session(engines, "cpu")
    assert (session.frames, session.size, session.hooked) == (4, 128, 16)
    den = engines["denoiser_step"]
    den.spec = dataclasses.replace(
        den.spec, inputs=(*den.spec.inputs, TensorSpec("audio_tokens", "float32", (1,)))
    )
    with pytest.raises(EngineError, match=r"inputs nobody provides: \['audio_tokens'\]"):
        Session(engines, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["faithful", "fast", "turbo"])
def test_cuda_graph_loop_equals_eager_steps(tiny, tiny_onnx, preset):
    """Every preset's whole step loop is one CUDA graph, and it equals per-step launches."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: the CUDA-graph step loop is NOT tested")
    from hallo2rt.runtime.sampler import PRESETS, schedule

    p = PRESETS[preset]
    cfg = RunConfig(
        steps=min(p.steps, 4),
        sampler=p.sampler,
        guidance_steps=None if p.guidance_steps is None else 2,
        cache_interval=p.cache_interval,
        frames=4,
    )
    shapes = GraphShapes(**tiny_onnx[1]["denoiser_step"].shapes)
    names = ("denoiser_step", *cfg.sampling.engines())
    session = session_from_pretrained(tiny, shapes, "cuda", names=names)
    portrait = _portrait(session.size)
    feats = torch.randn(8, 2, 32, generator=torch.Generator().manual_seed(3))
    with session:
        off = dataclasses.replace(cfg, cuda_graph=False)
        eager = [c.frames for c in generate(session, portrait, feats, off)]
        graph = [c.frames for c in generate(session, portrait, feats, cfg)]
        # the graph really ran: no silent fall back to per-step launches
        sched = schedule(cfg.sampler, cfg.steps)
        loop = step_loop(session, sched, cfg.cfg_scale, plan=cfg.sampling.plan())
        assert loop.mode == "cuda-graph"
    assert all(_psnr(a, b).min() >= 40 for a, b in zip(eager, graph, strict=True))


def test_the_dpmpp_loop_on_the_engine_equals_diffusers_driven_by_the_same_engine(ort_dir):
    """--sampler dpmpp-2m on the tiny ORT denoiser: the loop (engine returns the guided x0
    prediction, three element-wise ops mix it) ends where diffusers' DPM-Solver++(2M) ends
    when it is fed the same engine's guided v (coef 0, 1) at every step."""
    diffusers = pytest.importorskip("diffusers")
    from hallo2rt.engines.bank import LOOP_INPUTS
    from hallo2rt.engines.spec import random_feed
    from hallo2rt.runtime.sampler import dpmpp_2m_schedule

    from .test_sampler import DPM

    with Session.open(ort_dir) as session:
        spec = session.spec("denoiser_step")
        feed = random_feed(spec, spec.sizes("opt"), seed=3)
        const = {k: v for k, v in feed.items() if k not in LOOP_INPUTS}
        noise = torch.randn(feed["latents"].shape, generator=torch.Generator().manual_seed(0))
        sched = dpmpp_2m_schedule(5)
        got = StepLoop(session, sched, 3.5)(const, noise)
        ref = diffusers.DPMSolverMultistepScheduler(**DPM)
        ref.set_timesteps(5)
        x = noise.clone()
        for t in ref.timesteps:
            v = session.run(
                "denoiser_step",
                **const,
                latents=x,
                timestep=t.reshape(1),
                coef=torch.tensor([0.0, 1.0]),
                cfg_scale=torch.tensor([3.5]),
            )["next_latents"].clone()
            x = ref.step(v, t, x).prev_sample
    assert torch.isfinite(got).all() and not torch.equal(got, noise)
    torch.testing.assert_close(got, x, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def speed_dir(ort_dir, tiny_root, tiny_onnx, tmp_path_factory):
    """ort_dir plus the step engines of guidance truncation and of the guided feature cache,
    exported from the same tree and built with ONNX Runtime (export checks each against its
    torch wrapper, build against its ONNX). The conditional-only cache pair is the same wrapper
    code (halves=1 with deep/shallow); it is checked on the torch wrappers
    (tests/export/test_denoiser_variants.py), not exported here, to keep the suite's time."""
    from hallo2rt.export.onnx import export_engines

    onnx = tmp_path_factory.mktemp("speed_onnx")
    names = ["denoiser_cond", "denoiser_deep", "denoiser_shallow"]
    shapes = GraphShapes(**tiny_onnx[1]["denoiser_step"].shapes)
    export_engines(tiny_root, onnx, names, shapes)
    build_engines(onnx, ort_dir, BuildConfig("onnxruntime"), only=names)
    return ort_dir


def _clip_inputs(session, seed=3):
    from hallo2rt.engines.bank import LOOP_INPUTS
    from hallo2rt.engines.spec import random_feed

    spec = session.spec("denoiser_step")
    feed = random_feed(spec, spec.sizes("opt"), seed=seed)
    const = {k: v for k, v in feed.items() if k not in LOOP_INPUTS}
    noise = torch.randn(feed["latents"].shape, generator=torch.Generator().manual_seed(0))
    return const, noise


def test_speed_plans_on_onnx_runtime_engines_equal_the_torch_engines(speed_dir, tiny, tiny_onnx):
    """The step loop of a guidance-truncated plan and of a cached one on the ORT engines ends
    where the same plan ends on the torch wrappers of the same weights."""
    from hallo2rt.runtime.sampler import Sampling, schedule

    names = ("denoiser_step", "denoiser_cond", "denoiser_deep", "denoiser_shallow")
    shapes = GraphShapes(**tiny_onnx[1]["denoiser_step"].shapes)
    torch_session = session_from_pretrained(tiny, shapes, names=names)
    ort_session = Session.open(speed_dir, names=names)
    plans = [
        Sampling("dpmpp-2m", 5, guidance_steps=2),
        Sampling("dpmpp-2m", 6, cache_interval=2),
    ]
    for sampling in plans:
        ends = []
        for session in (torch_session, ort_session):
            with session:
                const, noise = _clip_inputs(session)
                sched = schedule(sampling.sampler, sampling.steps)
                loop = StepLoop(session, sched, 3.5, plan=sampling.plan())
                ends.append(loop(const, noise))
        assert torch.isfinite(ends[0]).all()
        torch.testing.assert_close(ends[1], ends[0], rtol=1e-4, atol=1e-4)


def test_the_loop_hands_the_deep_feature_to_the_shallow_steps(tiny, tiny_onnx):
    """A cached DDIM plan through StepLoop equals the same plan written out by hand on the
    export wrappers; conditional-only steps at cfg 1 equal guided ones."""
    from hallo2rt.export.graphs import build_graph
    from hallo2rt.runtime.sampler import Sampling

    shapes = GraphShapes(**tiny_onnx[1]["denoiser_step"].shapes)
    sampling = Sampling("ddim", 5, guidance_steps=3, cache_interval=2)
    session = session_from_pretrained(tiny, shapes, names=("denoiser_step", *sampling.engines()))
    sched = ddim_schedule(5)
    with session:
        const, noise = _clip_inputs(session)
        got = StepLoop(session, sched, 3.5, plan=sampling.plan())(const, noise)
    graphs = {n: build_graph(n, tiny, shapes) for n in sampling.engines()}
    x, feature = noise.clone(), {}
    with torch.no_grad():
        for i, name in enumerate(sampling.plan()):
            feed = {
                **const,
                "latents": x,
                "timestep": sched.timesteps[i].reshape(1),
                "coef": torch.stack([sched.a[i], sched.b[i]]),
                "cfg_scale": torch.tensor([3.5]),
            }
            feed["deep_feature"] = feature.get(name.replace("_shallow", "_deep"))
            out = graphs[name].module(*[feed[t.name] for t in graphs[name].spec.inputs])
            if name.endswith("_deep"):
                feature[name] = out[1]
            x = out[0]
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)
    # guidance truncation at cfg 1 changes nothing (up to rounding)
    names = ("denoiser_step", "denoiser_cond")
    session = session_from_pretrained(tiny, shapes, names=names)
    with session:
        guided = StepLoop(session, sched, 1.0)(const, noise)
        plan = Sampling("ddim", 5, guidance_steps=1).plan()
        truncated = StepLoop(session, sched, 1.0, plan=plan)(const, noise)
    torch.testing.assert_close(truncated, guided, rtol=1e-4, atol=1e-4)


def test_presets_and_sampler_reach_the_run(speed_dir, tmp_path, capsys):
    """generate --preset fast runs DPM-Solver++ with guidance on the first half of its steps;
    explicit knobs override the preset's; the default stays the faithful DDIM 40-step run."""
    from hallo2rt.cli import _run_config
    from hallo2rt.options import build_parser

    def cfg(*extra):
        args = build_parser().parse_args(["demo", *extra])
        return _run_config(args, size=64)

    assert cfg().sampling == RunConfig().sampling
    fast = cfg("--preset", "fast")
    assert (fast.sampler, fast.steps, fast.guidance_steps, fast.cache_interval) == (
        "dpmpp-2m",
        12,
        6,
        1,
    )
    assert cfg("--preset", "turbo", "--steps", "3").sampling.plan() == (
        "denoiser_deep",
        "denoiser_shallow",
        "denoiser_deep",
    )
    assert cfg("--preset", "fast", "--sampler", "ddim").sampler == "ddim"
    assert cfg("--preset", "fast", "--guidance-steps", "2").guidance_steps == 2
    assert cfg("--cache-interval", "3").sampling.engines() == ("denoiser_deep", "denoiser_shallow")
    write_audio(tmp_path / "a.wav", 0.4, rate=16000)
    for name, extra in (
        ("fast", ["--preset", "fast", "--steps", "3", "--guidance-steps", "1"]),
        ("cached", ["--steps", "3", "--cache-interval", "2"]),
    ):
        out = tmp_path / f"{name}.mp4"
        argv = _argv(speed_dir, tmp_path, tmp_path / "a.wav", out)
        argv[argv.index("--steps") : argv.index("--steps") + 2] = []
        assert main(argv + extra) == 0
        with av.open(str(out)) as c:
            assert c.streams.video[0].frames == 10
    # bench on the same ORT engines with a preset beside faithful
    report = tmp_path / "bench.jsonl"
    argv = ["bench", "--engines", str(speed_dir), "--preset", "fast", "--steps", "2"]
    argv += ["--guidance-steps", "1", "--clips", "1", "--repeats", "1", "--warmup", "0"]
    assert main([*argv, "--against", "faithful", "--json", str(report)]) == 0
    import json

    records = [json.loads(line) for line in report.read_text().splitlines()]
    against = next(r for r in records if r["kind"] == "against")
    assert against["sampling"] == "dpmpp-2m 2 steps, guidance on the first 1"
    assert against["frames_compared"] == 4 and against["speedup"] > 0
    engines = {r["engine"]: r for r in records if r["kind"] == "engine"}
    assert "denoiser_cond" in engines
