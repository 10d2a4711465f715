#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): on a machine with an NVIDIA GPU, install what can be installed into
# a fresh venv, run the harness-free GPU paths for real, and write JSON.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [-- gpu_check.py args, e.g. --model tiny]
#
# OUT_DIR (default gpu_check_out/) receives install.log, pip_list.txt and gpu_check.json. Set VENV=DIR to
# reuse an environment (already holding fastgen[gpu,export] and TensorRT) instead of making one.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check_out}; shift || true
[ "${1:-}" = "--" ] && shift
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed: no NVIDIA driver?" | tee -a "$out/install.log"

if [ -z "${VENV:-}" ]; then
  VENV=$(mktemp -d "${TMPDIR:-/tmp}/fastgen-gpu.XXXXXX")/venv
  python3 -m venv "$VENV" || { echo "python3 -m venv failed"; exit 1; }
  # fastgen[gpu] must leave exactly one onnxruntime distribution (onnxruntime-gpu); the export extra
  # brings torch / diffusers for the reference run and the model build
  "$VENV/bin/pip" install -q ".[gpu,export]" >> "$out/install.log" 2>&1 || echo "install of .[gpu,export] failed" | tee -a "$out/install.log"
  # TensorRT is best effort: the check records its absence
  "$VENV/bin/pip" install -q ".[tensorrt]" >> "$out/install.log" 2>&1 || echo "install of .[tensorrt] failed" | tee -a "$out/install.log"
fi
"$VENV/bin/pip" list > "$out/pip_list.txt" 2>&1
"$VENV/bin/python" benchmarks/gpu_check.py --out "$out/gpu_check.json" "$@"
