"""The console script: subcommands listed, the demo runs, unbuilt ones refuse plainly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hallo2rt.cli import COMMANDS, main
from hallo2rt.options import SUBCOMMANDS


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "hallo2rt.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    names = {"export", "build", "generate", "upscale", "bench", "demo", "doctor", "proof"}
    for name in names:
        assert name in out
    assert set(SUBCOMMANDS) == names


def test_every_subcommand_is_built():
    assert set(COMMANDS) == set(SUBCOMMANDS)


def test_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2


def test_demo_runs_anywhere_and_says_the_weights_are_random(tmp_path, capsys):
    av = pytest.importorskip("av")
    out = tmp_path / "demo.mp4"
    argv = [
        "demo",
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
        "--steps",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err and "hallo2rt generate --checkpoints" in err
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 73  # ceil(2.9 s x 25) of bundled speech
    assert (tmp_path / "cache" / "demo-tiny-v3" / "hallo2" / "net.pth").is_file()
    assert main(argv) == 0  # the cached model is reused
