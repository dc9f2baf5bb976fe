"""A run never writes its video over one of its inputs (issue: `generate --out` naming the
input audio or image, `upscale --in X --out X` replaced the input and exited 0), and an --out
that is a directory is refused; all before any weights load, with the input left as it was."""

from __future__ import annotations

import os
import shutil

import pytest

from hallo2rt.cli import main
from hallo2rt.demo import ASSETS, DEMO_FACE_BOX
from hallo2rt.engines.errors import OptionError

from .media_helpers import write_audio

pytest.importorskip("av")


@pytest.fixture
def media(tmp_path):
    write_audio(tmp_path / "a.wav", 0.5)
    shutil.copy(ASSETS / "portrait.jpg", tmp_path / "p.jpg")
    return tmp_path


def _generate(media, out, *extra):
    return [
        "generate",
        "--engines",
        str(media / "no-engines"),  # never opened: the output check comes first
        "--image",
        str(media / "p.jpg"),
        "--audio",
        str(media / "a.wav"),
        "--out",
        str(out),
        "--face-box",
        DEMO_FACE_BOX,
        *extra,
    ]


@pytest.mark.parametrize("which", ["a.wav", "p.jpg"])
def test_generate_refuses_to_write_over_an_input(media, capsys, which):
    before = (media / which).read_bytes()
    assert main(_generate(media, media / which)) == 1
    err = capsys.readouterr().err
    assert f"--out {media / which} is the" in err and "choose another output path" in err
    assert (media / which).read_bytes() == before


def test_a_link_to_an_input_is_the_input(media, capsys):
    os.link(media / "a.wav", media / "hard.mp4")
    (media / "soft.mp4").symlink_to(media / "p.jpg")
    for out, option in (("hard.mp4", "audio"), ("soft.mp4", "image")):
        assert main(_generate(media, media / out)) == 1
        assert f"is the {option} file" in capsys.readouterr().err


def test_upscale_refuses_in_equal_out_and_a_directory_out(media, capsys):
    video = media / "v.mp4"
    video.write_bytes(b"not really a video")
    argv = ["upscale", "--engines", str(media / "none"), "--in", str(video)]
    assert main([*argv, "--out", str(video)]) == 1
    assert "is the input file" in capsys.readouterr().err
    assert video.read_bytes() == b"not really a video"
    assert main(_generate(media, media)) == 1
    assert f"--out {media} is a directory" in capsys.readouterr().err


def test_the_library_checks_too(media):
    """generate_video and upscale_video check before touching the session (the server calls
    them directly)."""
    from hallo2rt.runtime.media import MediaError
    from hallo2rt.runtime.pipeline import generate_video
    from hallo2rt.runtime.sr import upscale_video

    audio = media / "a.wav"
    with pytest.raises(MediaError, match="is the audio file"):
        generate_video(None, media / "p.jpg", audio, audio, (0, 0, 1, 1), None)
    with pytest.raises(MediaError, match="is the input file"):
        upscale_video(None, audio, audio)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("size", 0, "--size 0: must be a positive multiple of 64"),
        ("cfg_scale", float("inf"), "--cfg inf: must be a finite number >= 0"),
        ("frames", 1, "--frames 1: must be at least 2"),
        ("pose_weight", float("nan"), "--pose/face/lip-weight (nan, 1.0, 1.0): must be finite"),
    ],
)
def test_run_options_out_of_range_name_the_option_and_the_range(field, value, message):
    from hallo2rt.runtime.pipeline import RunConfig

    with pytest.raises(OptionError) as err:
        RunConfig(**{field: value})
    assert str(err.value).startswith(message)


def test_export_shapes_out_of_range_leave_nothing(tmp_path, capsys):
    argv = ["export", "--checkpoints", str(tmp_path / "none"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--size", "-64"]) == 1
    assert "--size -64: must be a positive multiple of 64" in capsys.readouterr().err
    assert main([*argv, "--frames", "0"]) == 1
    assert "--frames 0: must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_generate_checks_run_options_before_loading_anything(media, capsys):
    assert main(_generate(media, media / "o.mp4", "--size", "0")) == 1
    assert "--size 0: must be a positive multiple of 64" in capsys.readouterr().err
    assert main(_generate(media, media / "o.mp4", "--cfg", "inf")) == 1
    assert "--cfg inf: must be a finite number" in capsys.readouterr().err
    assert not (media / "o.mp4").exists()


def test_two_writers_of_one_out_never_mix(tmp_path):
    """Two runs writing the same --out at once: each writes its own temporary file, and the
    last to finish replaces the other's video whole (before, both wrote one `.partial`)."""
    import av
    import numpy as np

    from hallo2rt.runtime.video import VideoWriter

    out = tmp_path / "same.mp4"
    first, second = VideoWriter(out, 64, 64), VideoWriter(out, 64, 64)
    assert first.tmp != second.tmp
    dark, light = np.full((5, 64, 64, 3), 20, np.uint8), np.full((9, 64, 64, 3), 230, np.uint8)
    for i in range(5):
        first.write(dark[i : i + 1])
        second.write(light[i : i + 1])
    second.write(light[5:])
    first.close()
    second.close()
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 9 and all(abs(float(f.mean()) - 230) < 3 for f in frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.mp4"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file, not mkstemp's 0600
