"""The typed manifest: one parity shape for export and build, a JSON round trip, and the
version-1 manifests of earlier builds still read."""

from __future__ import annotations

import json

import pytest

from hallo2rt.engines.manifest import (
    MANIFEST_VERSION,
    EngineError,
    Manifest,
    Parity,
    ParityRun,
    read_manifest,
)
from hallo2rt.engines.spec import EngineSpec, TensorSpec

SPEC = EngineSpec("x", (TensorSpec("a", "float32", (2,)),), (TensorSpec("b", "float32", (2,)),))
NUMBERS = {"b": {"rel": 1e-7, "max_abs_diff": 1e-7, "max_abs_ref": 1.0, "rel_tol": 1e-4}}


def test_a_manifest_round_trips_through_json(tmp_path):
    parity = Parity("ref", "max|diff| <= tol", {"opt": ParityRun({}, "as exported", NUMBERS)})
    m = Manifest("x", SPEC, "fp32", backend="onnxruntime", parity=parity, artifact="m.onnx")
    m.extra["provider"] = "CPUExecutionProvider"
    m.write(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["manifest_version"] == MANIFEST_VERSION and data["spec_digest"] == SPEC.digest()
    assert data["provider"] == "CPUExecutionProvider"  # backend facts stay top-level keys
    back = read_manifest(tmp_path)
    assert back == m and back.parity.summary() == "max rel 1.00e-07"


def test_version_1_export_and_build_parity_records_are_read():
    export_v1 = {
        "reference": "PyTorch wrapper, fp32, CPU",
        "runtime": "onnxruntime CPUExecutionProvider",
        "attention": "as exported",
        "rel_tol": 1e-4,
        "outputs": NUMBERS,
    }
    p = Parity.from_json(export_v1)
    assert p.runs["opt"].outputs == NUMBERS and p.runs["opt"].attention == "as exported"
    build_v1 = {
        "reference": "onnx",
        "gate": "cosine >= 0.999",
        "results": {"opt": {"sizes": {"n": 2}, "reference_attention": "fused", "outputs": {}}},
    }
    p = Parity.from_json(build_v1)
    assert p.runs["opt"].sizes == {"n": 2} and p.runs["opt"].attention == "fused"
    skipped = Parity.from_json({"skipped": "built with --no-check: NOT verified"})
    assert skipped.skipped and skipped.summary().startswith("NOT checked")


def test_an_unreadable_manifest_names_the_fix(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"engine": "x", "spec": {"nope": 1}}))
    with pytest.raises(EngineError, match="rebuild it"):
        read_manifest(tmp_path)
