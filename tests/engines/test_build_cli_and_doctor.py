"""`hallo2rt build` and `hallo2rt doctor` from the command line."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from hallo2rt.cli import main
from hallo2rt.engines.doctor import doctor

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def built(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_engines")
    argv = ["build", "--onnx", str(tiny_onnx[0]), "--out", str(out), "--backend", "onnxruntime"]
    assert main([*argv, "--only", "image_proj,face_locator"]) == 0
    return out


def test_build_prints_each_engine_and_its_check(built, capsys, tiny_onnx, tmp_path):
    out = tmp_path / "again"
    argv = ["build", "--onnx", str(tiny_onnx[0]), "--out", str(out), "--backend", "torch"]
    assert main([*argv, "--only", "image_proj"]) == 0
    err = capsys.readouterr().err
    assert "building image_proj" in err and "image_proj      torch fp32" in err
    assert "vs ONNX: max rel" in err and "built 1 engine(s)" in err
    assert sorted(p.name for p in built.iterdir()) == ["face_locator", "image_proj"]


def test_no_check_is_recorded_as_not_verified(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "unchecked"
    argv = ["build", "--onnx", str(tiny_onnx[0]), "--out", str(out), "--backend", "onnxruntime"]
    assert main([*argv, "--only", "image_proj", "--no-check"]) == 0
    assert "NOT checked" in capsys.readouterr().err
    m = json.loads((out / "image_proj/manifest.json").read_text())
    assert "NOT verified" in m["parity"]["skipped"]
    assert "not checked" in doctor(out).text()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_tensorrt_build_without_tensorrt_says_what_to_install(tiny_onnx, tmp_path, capsys):
    argv = ["build", "--onnx", str(tiny_onnx[0]), "--out", str(tmp_path / "t")]
    assert main([*argv, "--backend", "tensorrt"]) == 1
    assert "use --device cuda" in capsys.readouterr().err
    assert main([*argv, "--backend", "tensorrt", "--device", "cuda"]) == 1
    assert "needs TensorRT: pip install tensorrt" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_build_of_a_missing_export_names_it(tmp_path, capsys):
    argv = ["build", "--onnx", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--backend", "onnxruntime"]) == 1
    assert "run `hallo2rt export` first" in capsys.readouterr().err


def test_doctor_reports_what_runs_here(built, capsys):
    assert main(["doctor", "--engines", str(built)]) == 0
    out = capsys.readouterr().out
    assert f"torch: {torch.__version__}" in out
    assert "onnxruntime@cpu: ok" in out and "torch@cpu: ok" in out
    assert ("torch@cuda: ok" in out) == torch.cuda.is_available()
    trt_works = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
    assert ("tensorrt@cuda: ok" in out) == trt_works
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt: not installed" in out
    assert "image_proj: onnxruntime fp32 on cpu" in out and "ok (checked against its ONNX)" in out
    assert "not present: audio_encoder" in out


def test_doctor_flags_stale_and_partial_engines(built, tmp_path, capsys):
    root = tmp_path / "engines"
    shutil.copytree(built, root)
    path = root / "image_proj/manifest.json"
    m = json.loads(path.read_text())
    m["environment"]["onnxruntime"] = "1.0.0"
    path.write_text(json.dumps(m))
    (root / ".face_locator.partial").mkdir()
    assert main(["doctor", "--engines", str(root)]) == 1
    out = capsys.readouterr().out
    assert (
        "image_proj: onnxruntime fp32" in out
        and "STALE here (onnxruntime: built for '1.0.0'" in out
    )
    assert "hallo2rt build --onnx" in out
    assert ".face_locator.partial: an interrupted build" in out
    assert "face_locator: onnxruntime fp32 on cpu" in out
