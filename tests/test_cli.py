"""The console script: subcommands listed, unbuilt ones refuse plainly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hallo2rt.cli import NOT_BUILT_EXIT, SUBCOMMANDS, main


def test_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "hallo2rt.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("export", "build", "generate", "bench", "demo", "doctor"):
        assert name in out
    assert set(SUBCOMMANDS) == {"export", "build", "generate", "bench", "demo", "doctor"}


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_unbuilt_subcommands_say_so_and_fail(name, capsys):
    assert main([name]) == NOT_BUILT_EXIT
    assert "not built yet" in capsys.readouterr().err


def test_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2
