#!/usr/bin/env bash
# The one script to run on a CUDA machine: builds gdla._C with its CUDA kernels, runs the op
# tests (CUDA variants included, none may be skipped), the GPU benchmarks and the GPU targets,
# and writes benchmarks/results/gpu-<device>.md. Stops at the first error.
#
#   scripts/gpu_check.sh            # uses `python` (set PYTHON=... to choose another)
#
# Needs a CUDA build of torch, nvcc (CUDA_HOME), pytest and pytest-benchmark.
set -euo pipefail
trap 'echo "gpu_check.sh: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
WORK="$(mktemp -d)"

echo "== machine"
nvidia-smi
"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
assert torch.version.cuda is not None, "torch is a CPU-only build"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "device", torch.cuda.get_device_name())
EOF
DEVICE="$("$PY" -c 'import re, torch; print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-"))')"
REPORT="benchmarks/results/gpu-${DEVICE}.md"

echo "== build (CUDAExtension)"
start=$(date +%s)
FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-8}" "$PY" -m pip install --no-build-isolation --no-deps -e . 2>&1 | tail -n 3
BUILD_SECONDS=$(( $(date +%s) - start ))
"$PY" -c 'import gdla.ops as o, sys; sys.exit(0 if o.has_cuda_kernels() else "gdla._C was built without CUDA kernels")'

echo "== tests (CPU and CUDA)"
"$PY" -m pytest tests/gdla/test_ops.py tests/gdla/test_ops_compile.py tests/csrc -q -ra \
    --junitxml="$WORK/tests.xml"
"$PY" - "$WORK/tests.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
suite = ET.parse(sys.argv[1]).getroot().iter("testcase")
skipped = [case.get("name") for case in suite if case.find("skipped") is not None]
if skipped:
    sys.exit(f"{len(skipped)} tests were skipped on a GPU machine: {skipped[:10]}")
print("no test skipped")
EOF

echo "== benchmarks (cuda, float32)"
BENCH_CMD="$PY -m pytest benchmarks/test_bench_ops.py --benchmark-only --device cuda --dtype float32"
$BENCH_CMD --benchmark-json="$WORK/bench.json" --benchmark-autosave -q
"$PY" benchmarks/report.py "$WORK/bench.json" --title "GPU ($DEVICE)" --device cuda --command "$BENCH_CMD" > "$WORK/report.md"

echo "== GPU targets"
"$PY" benchmarks/gpu_targets.py > "$WORK/targets.md"

{
    cat "$WORK/report.md"
    echo
    echo "Build of gdla._C with CUDA kernels: ${BUILD_SECONDS} s (MAX_JOBS=${MAX_JOBS:-8})."
    echo
    cat "$WORK/targets.md"
} > "$REPORT"
echo "== wrote $REPORT"
