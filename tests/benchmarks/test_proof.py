"""``hallo2rt proof`` on the CPU: every section reports a result or a reason, the budget is
respected, a failing section or a missed gate makes the command fail."""

from __future__ import annotations

import json

import pytest

from hallo2rt.benchmarks import proof
from hallo2rt.cli import main

pytest.importorskip("av")


def _records(out):
    return [json.loads(line) for line in (out / "proof.jsonl").read_text().splitlines()]


def test_every_section_reports_a_result_or_a_reason(tmp_path, capsys):
    assert main(["proof", "--out", str(tmp_path), "--steps", "2", "--budget", "600"]) == 0
    config, *sections = _records(tmp_path)
    assert config["model"] == "tiny" and config["resolved_device"] == "cpu"
    assert [r["section"] for r in sections] == proof.section_names()
    for r in sections:
        assert r["status"] in ("done", "skipped"), r
        if r["status"] == "skipped":
            assert r["reason"], r
        else:
            assert r["result"] and r["seconds"] >= 0, r
    by = {r["section"]: r for r in sections}
    gpu_only = [s.name for s in proof.SECTIONS if s.needs_gpu]
    assert gpu_only and all(by[n]["reason"] == "needs a CUDA GPU (none here)" for n in gpu_only)
    assert by["generation"]["result"]["hallo2rt"]["frames"] == 16
    assert by["generation"]["result"]["baseline"]["fps"] > 0
    assert by["end_to_end"]["result"]["fps"] > 0
    assert by["super_resolution"]["result"]["out_side"] == 256  # tiny 64 px, x4
    assert by["weights"]["checks"][0]["ok"]  # no all-zero tensor
    report = capsys.readouterr().out
    assert all(f"| {n} |" in report for n in proof.section_names())
    assert (tmp_path / "proof.md").read_text().strip() == report.strip()


def test_sections_that_do_not_fit_the_budget_are_skipped_with_the_reason(tmp_path):
    assert main(["proof", "--out", str(tmp_path), "--budget", "3", "--only", "weights"]) == 0
    by = {r["section"]: r for r in _records(tmp_path)[1:]}
    assert by["weights"]["status"] == "skipped" and by["weights"]["reason"].startswith("budget:")
    assert by["generation"]["reason"] == "not in --only"


def test_a_failed_section_or_a_missed_gate_fails_the_command(tmp_path, monkeypatch, capsys):
    def broken(ctx):
        raise RuntimeError("boom")

    def missed(ctx):
        return {"result": {"x": 1}, "checks": [proof._check("fp16 PSNR", 20.0, 35.0, "gate")]}

    sections = (
        proof.Section("a", "raises", {"tiny": 0, "full": 0}, broken),
        proof.Section("b", "misses a gate", {"tiny": 0, "full": 0}, missed),
    )
    monkeypatch.setattr(proof, "SECTIONS", sections)
    assert main(["proof", "--out", str(tmp_path), "--budget", "60"]) == 1
    a, b = _records(tmp_path)[1:]
    assert a["status"] == "failed" and a["error"] == "RuntimeError: boom"
    assert b["status"] == "done" and not b["checks"][0]["ok"]
    err = capsys.readouterr().err
    assert "FAILED a: RuntimeError: boom" in err and "FAILED b: fp16 PSNR = 20.0" in err


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown sections"):
        proof.ProofConfig(only=("nope",))
    with pytest.raises(ValueError, match="--budget"):
        proof.ProofConfig(budget_s=0)
