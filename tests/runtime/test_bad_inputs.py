"""The battery of bad and odd inputs a new user meets, each through the real command line
(``hallo2rt.cli.main``) on the tiny model: the exit code, one line naming the problem and the
fix, no traceback without -v, and nothing left at the output path (no .partial either). Where
working is right (short audio), the case must work. SIGTERM and a full disk run in a child
process, as they happen."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from hallo2rt.cli import main
from hallo2rt.demo import ASSETS, DEMO_FACE_BOX

from .media_helpers import write_audio

pytest.importorskip("av")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def world(tiny_root, tiny_onnx, tmp_path_factory):
    """Shared, never modified: checkpoints, exports, built ORT engines and media."""
    from hallo2rt.engines.build import BuildConfig, build_engines
    from hallo2rt.engines.spec import GENERATION

    root = tmp_path_factory.mktemp("world")
    build_engines(tiny_onnx[0], root / "eng", BuildConfig("onnxruntime"), only=GENERATION)
    shutil.copy(ASSETS / "portrait.jpg", root / "p.jpg")
    write_audio(root / "a.wav", 0.5)
    write_audio(root / "short.wav", 0.1)
    np.save(root / "emb.npy", np.random.default_rng(0).standard_normal(64).astype(np.float32))
    np.save(root / "emb512.npy", np.zeros(512, np.float32))
    (root / "text.txt").write_text("not media\n")
    return {"ckpt": tiny_root, "onnx": tiny_onnx[0], "eng": root / "eng", "dir": root}


def generate(w, out, *extra, engines=None, audio="a.wav", image="p.jpg", emb="emb.npy"):
    return [
        "generate",
        "--engines",
        str(engines or w["eng"]),
        "--image",
        str(w["dir"] / image),
        "--audio",
        str(w["dir"] / audio),
        "--out",
        str(out),
        "--face-box",
        DEMO_FACE_BOX,
        "--face-embedding",
        str(w["dir"] / emb),
        "--steps",
        "1",
        *extra,
    ]


def export(w, out, *extra, checkpoints=None):
    """`hallo2rt export` of the tiny tree (or ``checkpoints``) into ``out``."""
    return ["export", "--checkpoints", str(checkpoints or w["ckpt"]), "--out", str(out), *extra]


def build(w, out, *extra):
    """`hallo2rt build` of the tiny exports into ``out`` with ONNX Runtime."""
    backend = ["--backend", "onnxruntime"]
    return ["build", "--onnx", str(w["onnx"]), "--out", str(out), *backend, *extra]


def upscale(w, src, out):
    """`hallo2rt upscale` with the tiny tree's modules (the video is read before any weights)."""
    return ["upscale", "--checkpoints", str(w["ckpt"]), "--in", str(src), "--out", str(out)]


def copy_engines(w, tmp: Path) -> Path:
    shutil.copytree(w["eng"], tmp / "eng")
    return tmp / "eng"


def edit_manifest(w, tmp: Path) -> Path:
    eng = copy_engines(w, tmp)
    path = eng / "vae_decoder" / "manifest.json"
    data = json.loads(path.read_text())
    data["spec"]["inputs"][0]["dims"][2] *= 2  # "its shapes changed"
    path.write_text(json.dumps(data))
    return eng


def flip_bytes(w, tmp: Path) -> Path:
    """The engine file corrupted in place, at the same size (a later modification time)."""
    eng = copy_engines(w, tmp)
    (eng / "vae_decoder" / "model.ort.onnx").touch()  # ordinary writes change the mtime
    with open(eng / "vae_decoder" / "model.ort.onnx", "r+b") as f:
        f.seek(-4000, os.SEEK_END)
        data = bytearray(f.read(64))
        f.seek(-4000, os.SEEK_END)
        f.write(bytes(b ^ 0xFF for b in data))
    return eng


def truncate(w, tmp: Path) -> Path:
    eng = copy_engines(w, tmp)
    path = eng / "vae_decoder" / "model.ort.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    return eng


def bad_checkpoints(kind: str):
    def make(w, tmp: Path) -> Path:
        root = tmp / "pretrained_models"
        shutil.copytree(w["ckpt"], root)
        net = root / "hallo2" / "net.pth"
        if kind == "truncated":
            net.write_bytes(net.read_bytes()[:5000])
        else:  # a pickle that runs a command when unpickled without weights_only
            torch.save({"x": _Evil(str(tmp / "PWNED"))}, net)
        return root

    return make


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class Case:
    name: str
    argv: Callable[[dict, Path], list[str]]  # (world, tmp) -> argv
    code: int
    says: tuple[str, ...]  # fragments of the one-line message (all must appear)
    never: tuple[str, ...] = ()  # fragments that must not appear (misleading text)
    absent: tuple[str, ...] = ("out.mp4",)  # paths under tmp that must not exist after
    left: tuple[str, ...] = field(default_factory=tuple)  # paths that must exist after


def _out(tmp: Path) -> Path:
    return tmp / "out.mp4"


CASES = [
    # --- generate: media and outputs -------------------------------------------------------
    Case(
        "out-is-the-audio",
        lambda w, t: generate(w, w["dir"] / "a.wav"),
        1,
        ("is the audio file", "choose another output path"),
        absent=(),
    ),
    Case(
        "out-is-a-directory",
        lambda w, t: generate(w, t),
        1,
        ("is a directory", "give a file name"),
        absent=(),
    ),
    Case(
        "out-not-mp4",
        lambda w, t: generate(w, t / "video.txt"),
        1,
        ("the output is an MP4 video", "video.mp4"),
        absent=("video.txt",),
    ),
    Case(
        "out-unwritable",
        lambda w, t: generate(w, "/proc/out.mp4"),
        1,
        ("cannot write in /proc", "choose a writable folder"),
    ),
    Case(
        "out-folder-missing",
        lambda w, t: generate(w, t / "nowhere" / "out.mp4"),
        1,
        ("the folder", "does not exist"),
        absent=("nowhere",),
    ),
    Case(
        "image-missing",
        lambda w, t: generate(w, _out(t), image="nope.jpg"),
        1,
        ("nope.jpg", "does not exist"),
    ),
    Case(
        "image-is-text",
        lambda w, t: generate(w, _out(t), image="text.txt"),
        1,
        ("text.txt",),
    ),
    Case(
        "audio-is-text",
        lambda w, t: generate(w, _out(t), audio="text.txt"),
        1,
        ("text.txt", "could not be opened as audio"),
    ),
    Case(
        "embedding-of-another-model",
        lambda w, t: generate(w, _out(t), emb="emb512.npy"),
        1,
        ("512 values", "expects 64"),
        never=("512-d",),
    ),
    # --- generate: options ----------------------------------------------------------------
    Case("size-0", lambda w, t: generate(w, _out(t), "--size", "0"), 1, ("--size 0",)),
    Case(
        "engines-of-another-size",
        lambda w, t: generate(w, _out(t), "--size", "64"),  # the tiny engines are 128 px
        1,
        ("does not fit the engines", "64 px (the engines take 128)", "hallo2rt export --size"),
    ),
    Case("cfg-inf", lambda w, t: generate(w, _out(t), "--cfg", "inf"), 1, ("--cfg",)),
    Case(
        "preset-engines-not-built",
        lambda w, t: generate(w, _out(t), "--preset", "fast", "--guidance-steps", "0"),
        1,
        ("has no denoiser_cond", "hallo2rt export", "--only denoiser_cond", "--preset faithful"),
    ),
    Case(
        "guidance-steps-beyond-steps",
        lambda w, t: generate(w, _out(t), "--guidance-steps", "3"),
        1,
        ("--guidance-steps 3: must be between 0 (no guidance) and --steps (1)",),
    ),
    Case(
        "cache-interval-0",
        lambda w, t: generate(w, _out(t), "--cache-interval", "0"),
        1,
        ("--cache-interval 0: must be between 1 (no cache)",),
    ),
    Case(
        "frames-1",
        lambda w, t: generate(w, _out(t), "--frames", "1"),
        1,
        ("--frames 1",),
        never=("bad feed",),
    ),
    Case("frames-0", lambda w, t: generate(w, _out(t), "--frames", "0"), 1, ("--frames 0",)),
    Case("threads-0", lambda w, t: generate(w, _out(t), "--threads", "0"), 1, ("--threads 0",)),
    Case(
        "cuda-on-cpu-engines",
        lambda w, t: generate(w, _out(t), "--device", "cuda"),
        1,
        ("built for cpu, not cuda", "--device cuda", "--onnx /"),  # an absolute path
        never=("--device cpu",),
    ),
    # --- generate: engines ------------------------------------------------------------------
    Case(
        "manifest-edited",
        lambda w, t: generate(w, _out(t), engines=edit_manifest(w, t)),
        1,
        ("manifest.json was edited", "rebuild: hallo2rt build --onnx /"),
    ),
    Case(
        "engine-corrupted-in-place",
        lambda w, t: generate(w, _out(t), engines=flip_bytes(w, t)),
        1,
        ("does not match the hash", "rebuild"),
    ),
    Case(
        "engine-truncated",
        lambda w, t: generate(w, _out(t), engines=truncate(w, t)),
        1,
        ("corrupt or truncated", "rebuild"),
    ),
    # --- upscale, export, build, bench, doctor, demo -----------------------------------------
    Case(
        "upscale-in-is-out",
        lambda w, t: upscale(w, _out(t), _out(t)),
        1,
        ("is the input file",),
        absent=(),
    ),
    Case(
        "upscale-a-text-file",
        lambda w, t: upscale(w, w["dir"] / "text.txt", _out(t)),
        1,
        ("could not be opened as a video",),
        never=("--size 0", "0x0"),
    ),
    Case(
        "export-out-unwritable",
        lambda w, t: export(w, "/proc/hallo2rt-x", "--only", "image_proj"),
        1,
        ("--out /proc/hallo2rt-x", "cannot be created"),
    ),
    Case(
        "export-out-is-a-file",
        lambda w, t: export(w, w["dir"] / "text.txt", "--only", "image_proj"),
        1,
        ("is a file", "give a folder"),
    ),
    Case(
        "export-size-negative",
        lambda w, t: export(w, t / "x", "--size", "-64"),
        1,
        ("--size -64",),
        absent=("x",),
    ),
    Case(
        "export-frames-0",
        lambda w, t: export(w, t / "x", "--frames", "0"),
        1,
        ("--frames 0",),
        absent=("x",),
    ),
    Case(
        "export-over-built-engines",
        lambda w, t: export(w, copy_engines(w, t), "--only", "image_proj"),
        1,
        ("holds built engines", "image_proj", "export into another folder"),
        absent=(),
    ),
    Case(
        "export-truncated-checkpoint",
        lambda w, t: export(
            w, t / "x", "--only", "image_proj", checkpoints=bad_checkpoints("truncated")(w, t)
        ),
        1,
        ("net.pth", "corrupt"),
        absent=("x",),
    ),
    Case(
        "export-pickled-code",
        lambda w, t: export(
            w, t / "x", "--only", "image_proj", checkpoints=bad_checkpoints("evil")(w, t)
        ),
        1,
        ("net.pth", "could not be read"),
        absent=("x", "PWNED"),
    ),
    Case(
        "build-out-is-the-exports",
        lambda w, t: build(w, w["onnx"]),
        1,
        ("is the --onnx folder",),
        absent=(),
    ),
    Case(
        "build-out-is-a-file",
        lambda w, t: build(w, w["dir"] / "text.txt", "--only", "image_proj"),
        1,
        ("is a file", "give a folder"),
        absent=(),
    ),
    Case(
        "bench-json-into-missing-folder",
        lambda w, t: [
            "bench",
            "--engines",
            str(w["eng"]),
            "--steps",
            "1",
            "--clips",
            "1",
            "--json",
            str(t / "missing" / "b.jsonl"),
        ],
        1,
        ("--json", "missing", "does not exist"),
        absent=("missing",),
    ),
    Case(
        "demo-cache-is-a-file",
        lambda w, t: ["demo", "--cache", str(w["dir"] / "text.txt"), "--out", str(_out(t))],
        1,
        ("--cache", "is a file", "give a folder"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_clear_line_and_leaves_nothing(case, world, tmp_path, capsys):
    argv = case.argv(world, tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err and "unexpected error" not in err, err
    if case.says:
        message = [line for line in err.splitlines() if ": error: " in line]
        assert len(message) == 1, err
        for fragment in case.says:
            assert fragment in message[0], (fragment, message[0])
    for fragment in case.never:
        assert fragment not in err, (fragment, err)
    for name in case.absent:
        assert not (tmp_path / name).exists(), name
    partial = [p for p in _walk(tmp_path) if p.name.endswith(".partial")]
    assert not partial, partial


def _walk(root: Path) -> list[Path]:
    return [Path(d) / n for d, dirs, files in os.walk(root) for n in dirs + files]


def test_ctrl_c_during_an_export_keeps_finished_engines_whole_and_nothing_else(
    world, tmp_path, capsys, monkeypatch
):
    """Ctrl-C while the second engine is exported: exit 130, the first engine complete, no
    .partial folder of the second."""
    import hallo2rt.export.onnx as onnx_mod

    real, calls = onnx_mod.export_engine, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_mod, "export_engine", interrupted)
    out = tmp_path / "x"
    assert main(export(world, out, "--only", "image_proj,face_locator")) == 130
    assert "interrupted; the engines finished before it are whole" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["image_proj"]
    assert (out / "image_proj" / "manifest.json").is_file()


def test_short_audio_works(world, tmp_path, capsys):
    """0.1 s of audio (2.5 frames) is one clip, padded as the official last segment; the
    video has the audio's 3 frames (it failed in audio_encoder's feed check)."""
    import av

    assert main(generate(world, tmp_path / "short.mp4", audio="short.wav")) == 0
    with av.open(str(tmp_path / "short.mp4")) as c:
        assert c.streams.video[0].frames == 3 and c.streams.audio


def test_doctor_says_what_is_unbuilt(world, capsys):
    assert main(["doctor", "--engines", str(world["onnx"])]) == 1
    assert "NOT BUILT" in capsys.readouterr().out


def test_an_engine_corrupted_after_a_good_run_is_refused(world, tmp_path, capsys):
    """The first open of an engine copy hashes it and notes the files' state; a later
    in-place change is refused, and stays refused (the note is only written after a match)."""
    eng = copy_engines(world, tmp_path)
    assert main(generate(world, tmp_path / "ok.mp4", engines=eng)) == 0
    assert (eng / "vae_decoder" / ".verified.json").is_file()
    with open(eng / "vae_decoder" / "model.ort.onnx", "r+b") as f:
        f.seek(-4000, os.SEEK_END)
        f.write(b"\xff" * 16)
    for _ in range(2):
        assert main(generate(world, tmp_path / "bad.mp4", engines=eng)) == 1
        assert "does not match the hash" in capsys.readouterr().err
    assert not (tmp_path / "bad.mp4").exists()


# --- in a child process: signals and a full disk ------------------------------------------


def _child(argv: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hallo2rt.cli", *argv],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        **kw,
    )


def test_sigterm_mid_run_leaves_nothing(world, tmp_path):
    out = tmp_path / "run" / "out.mp4"
    out.parent.mkdir()
    child = _child(generate(world, out, "--steps", "40"))
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".*.partial")):  # the writer is open: clips are running
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read()
        time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert "terminated; no output was written" in err and "Traceback" not in err
    assert list(out.parent.iterdir()) == []


def _small_files(limit: int) -> Callable[[], None]:
    def setup() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return setup


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(world, tmp_path):
    """Files may not grow past 4 kB (RLIMIT_FSIZE): writing the video fails as on a full
    disk; the command says so and removes its partial file."""
    out = tmp_path / "run" / "out.mp4"
    out.parent.mkdir()
    child = _child(generate(world, out), preexec_fn=_small_files(4096))
    _, err = child.communicate(timeout=300)
    assert child.returncode == 1, err
    assert f"writing {out} failed" in err and "disk full" in err and "Traceback" not in err
    assert list(out.parent.iterdir()) == []
