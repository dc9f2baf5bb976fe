#!/usr/bin/env bash
# `hallo2rt proof` on a lent GPU machine that has torch, onnxruntime, numpy and pytest but no
# package index: the wheels it lacks (PyAV, Polygraphy; tensorrt where one is carried) travel in
# .whl/ (see README "Prove it on a GPU"), the project is installed beside them without its
# dependencies, and the proof writes its JSON lines and Markdown under $OUT (default ./proof-out).
# Usage: bash benchmarks/device_proof.sh [extra `hallo2rt proof` options]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-proof-out}"
site="$(mktemp -d)/site"
mkdir -p "$site" "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
fi
python -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" .
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python -m hallo2rt.cli proof --out "$out" "$@" 2>&1 | tee "$out/proof.log"
