"""A run never writes its video over one of its inputs (issue: `generate --out` naming the
input audio or image, `upscale --in X --out X` replaced the input and exited 0), and an --out
that is a directory is refused; all before any weights load, with the input left as it was."""

from __future__ import annotations

import os
import shutil

import pytest

from hallo2rt.cli import main
from hallo2rt.demo import ASSETS, DEMO_FACE_BOX

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
