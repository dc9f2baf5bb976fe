"""`hallo2rt bench` on the tiny model: the report's fields and their sanity (not speed)."""

from __future__ import annotations

import json

import pytest

from hallo2rt.cli import main
from hallo2rt.engines.spec import GENERATION

pytest.importorskip("av")


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bench_reports_engines_generation_baseline_stages_and_memory(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    argv = [
        "bench",
        "--random",
        "tiny",
        "--size",
        "64",
        "--steps",
        "2",
        "--clips",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--baseline",
        "official",
        "--json",
        str(out),
        "--plot",
        str(tmp_path / "stages.png"),
        "--markdown",
        str(tmp_path / "r.md"),
    ]
    assert main(argv) == 0
    records = _records(out)
    kinds = {r["kind"] for r in records}
    assert kinds == {
        "config",
        "environment",
        "engine",
        "generation",
        "end_to_end",
        "stages",
        "compute",
        "memory",
    }
    engines = {r["engine"]: r for r in records if r["kind"] == "engine"}
    assert set(engines) == set(GENERATION)
    for r in engines.values():
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] and r["calls"] == 2
    gen = {r["side"]: r for r in records if r["kind"] == "generation"}
    ours, base = gen["hallo2rt"], gen["official-style baseline"]
    assert ours["frames"] == base["frames"] == 32  # two clips of 16
    for r in (ours, base):
        assert r["fps"] == pytest.approx(r["frames"] / r["seconds"])
        assert 0 < r["first_clip_s"] <= r["seconds"]
    assert base["speedup"] == pytest.approx(ours["fps"] / base["fps"])
    e2e = next(r for r in records if r["kind"] == "end_to_end")
    assert e2e["frames"] == 32 and e2e["audio_seconds"] == pytest.approx(32 / 25)
    assert e2e["real_time_factor"] == pytest.approx(e2e["seconds"] / e2e["audio_seconds"])
    stages = next(r for r in records if r["kind"] == "stages")["stages"]
    assert set(stages) == {"audio", "reference", "denoise", "decode", "encode"}
    assert sum(v["share"] for v in stages.values()) == pytest.approx(1.0)
    den = engines["denoiser_step"]["median_ms"] / 1e3 * 2  # 2 steps per clip
    assert stages["denoise"]["seconds_per_clip"] == pytest.approx(den)
    env = next(r for r in records if r["kind"] == "environment")
    assert env["torch"] and env["shapes"] == {"size": 64, "frames": 16, "motion": 2}
    assert all(v.startswith("torch fp32 cpu") for v in env["engines"].values())
    comp = next(r for r in records if r["kind"] == "compute")
    assert comp["denoiser_tflops_achieved"] is None  # FLOP counts are for 512 px / 16 frames
    assert next(r for r in records if r["kind"] == "memory")["host_peak_rss_mb"] > 0
    from PIL import Image

    assert Image.open(tmp_path / "stages.png").size == (800, 220)
    report = capsys.readouterr().out
    assert "| denoiser_step | torch fp32 cpu |" in report and "vs baseline" in report
    assert (tmp_path / "r.md").read_text().strip() == report.strip()


def test_bench_on_built_engines_and_baseline_needs_modules(tiny_onnx, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from hallo2rt.engines.build import BuildConfig, build_engines

    build_engines(tiny_onnx[0], tmp_path / "ort", BuildConfig("onnxruntime"), only=GENERATION)
    argv = [
        "bench",
        "--engines",
        str(tmp_path / "ort"),
        "--steps",
        "1",
        "--clips",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--json",
        str(tmp_path / "b.jsonl"),
    ]
    assert main(argv) == 0
    env = next(r for r in _records(tmp_path / "b.jsonl") if r["kind"] == "environment")
    assert env["engines"]["denoiser_step"] == "onnxruntime fp32 cpu"
    assert main([*argv, "--baseline", "official"]) == 1
    assert "--baseline official runs the PyTorch modules" in capsys.readouterr().err


def test_bench_exports_and_builds_engines_for_a_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "b.jsonl"
    argv = [
        "bench",
        "--random",
        "tiny",
        "--backend",
        "onnxruntime",
        "--size",
        "64",
        "--steps",
        "1",
        "--clips",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--baseline",
        "official",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    records = _records(out)
    env = next(r for r in records if r["kind"] == "environment")
    assert set(env["engines"].values()) == {"onnxruntime fp32 cpu"}
    sides = {r["side"] for r in records if r["kind"] == "generation"}
    assert sides == {"hallo2rt", "official-style baseline"}


def test_bench_sr_only_reports_the_stage_split(tmp_path, capsys):
    out = tmp_path / "sr.jsonl"
    argv = ["bench", "--random", "tiny", "--size", "64", "--upscale", "2", "--sr-only"]
    assert main([*argv, "--json", str(out)]) == 0
    records = _records(out)
    assert [r["kind"] for r in records] == ["config", "environment", "super_resolution", "memory"]
    sr = records[2]
    assert sr["frames"] == 28 and sr["out_side"] == 128 and sr["fps"] > 0
    assert sr["calls"] == {
        "face_detector": 28,
        "face_restorer": 2,  # a first window of 16, then 12 new frames
        "bg_upsampler": 56,  # background and restored face per frame
        "face_parser": 28,
    }
    total = sum(sr["seconds_per_frame"].values()) * sr["frames"]
    assert total == pytest.approx(sr["seconds"], rel=1e-6)
    assert "Super-resolution x2 (64 -> 128 px)" in capsys.readouterr().out
    assert main([*argv[:-3], "--sr-only"]) == 1  # --sr-only without --upscale


def test_bench_a_preset_against_faithful_reports_speedup_beside_deviation(tmp_path, capsys):
    """bench --preset turbo --against faithful: both rendered from the same inputs on one
    session (its speed engines included), the speed-up reported with PSNR/SSIM (whole frame and
    mouth region) and the frame checks."""
    out = tmp_path / "b.jsonl"
    argv = ["bench", "--random", "tiny", "--size", "64", "--preset", "turbo", "--steps", "3"]
    argv += ["--clips", "1", "--repeats", "1", "--warmup", "0", "--against", "faithful"]
    assert main([*argv, "--json", str(out)]) == 0
    records = _records(out)
    against = next(r for r in records if r["kind"] == "against")
    assert against["against"] == "faithful" and against["frames_compared"] == 16
    assert against["sampling"] == "dpmpp-2m 3 steps, a full step every 2"
    assert against["speedup"] > 0 and against["problems"] == []
    assert 0 < against["psnr_mean"] < 100 and -1 <= against["ssim_mean"] <= 1
    engines = {r["engine"] for r in records if r["kind"] == "engine"}
    assert {"denoiser_deep", "denoiser_shallow"} <= engines
    text = capsys.readouterr().out
    assert "Against --preset faithful (ddim 40 steps)" in text
    assert main([*argv, "--sr-only", "--upscale", "2"]) == 1
    assert "takes no --against" in capsys.readouterr().err
