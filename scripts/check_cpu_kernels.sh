#!/usr/bin/env bash
# The kernel-sensitive tests (bf16 autocast, the kernel audit, ONNX export, equality with the
# reference implementations) run twice: on this CPU's native kernels, then with torch limited to
# AVX2 kernels (oneDNN's ONEDNN_MAX_CPU_ISA and ATen's ATEN_CPU_CAPABILITY), the kernel set of a
# CPU without AVX-512, BF16 or AMX. Extra arguments go to pytest (e.g. -m "not slow").
# Needs the environment of scripts/setup.sh.
set -uo pipefail
cd "$(dirname "$0")/.."

tests=(
  tests/test_autocast.py tests/test_kernel_audit.py tests/test_export.py
  tests/test_mit_reference.py tests/test_swin.py tests/test_hatnet.py tests/test_hila_formulation.py
)
echo "cpu: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores," \
  "flags: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
# torch.compile's on-disk cache does not tell kernel sets apart (code compiled for one, loaded
# under the other, computes wrong results or crashes): each run gets a cache of its own
caches=$(mktemp -d)
trap 'rm -rf "$caches"' EXIT
status=0
for kernels in native avx2; do
  env=(TORCHINDUCTOR_CACHE_DIR="$caches/$kernels")
  if [ "$kernels" = avx2 ]; then
    env+=(ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)
  fi
  echo "== kernels: $kernels ${env[*]}"
  env "${env[@]}" .venv/bin/python -c \
    'import torch; print("torch picks:", torch.backends.cpu.get_cpu_capability())' 2>/dev/null
  env "${env[@]}" .venv/bin/python -m pytest -q -n auto "${tests[@]}" "$@" || status=1
done
exit $status
