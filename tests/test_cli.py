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
    names = {
        "export",
        "build",
        "generate",
        "upscale",
        "bench",
        "demo",
        "doctor",
        "proof",
        "compare",
        "serve",
        "submit",
    }
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


def test_only_hallo2rt_errors_are_plain_messages_and_bugs_say_so(monkeypatch, capsys):
    """One line for a cause the user can fix (exit 1); a bug says it is one (exit 2); -v shows
    the traceback of either."""
    from hallo2rt import cli
    from hallo2rt.engines.errors import OptionError

    def fails(exc):
        def command(args):
            raise exc

        return command

    monkeypatch.setitem(cli.COMMANDS, "doctor", fails(OptionError("--x 3: must be 1 or 2")))
    assert main(["doctor"]) == 1
    assert capsys.readouterr().err.strip() == "hallo2rt doctor: error: --x 3: must be 1 or 2"
    monkeypatch.setitem(cli.COMMANDS, "doctor", fails(KeyError("spec")))
    assert main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert "unexpected error KeyError" in err and "-v for the traceback" in err
    with pytest.raises(KeyError):
        main(["-v", "doctor"])
    monkeypatch.setitem(cli.COMMANDS, "doctor", fails(OptionError("bad")))
    with pytest.raises(OptionError):
        main(["-v", "doctor"])
