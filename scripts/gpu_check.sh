#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run (under 8 minutes on one GPU): the tests marked
# `cuda` (tests/test_cuda.py: detectron2's AMP trainer for MiT-B0/B1, Swin-T and HAT-Net-T, plain,
# + HILA S3 and S234; bf16 autocast against float32; torch.compile against eager), then the
# speed benchmark against timm / transformers on identical weights and HILA's cost, on the GPU.
# Without a GPU the tests skip and the benchmarks are left out, saying so. Needs the environment
# of scripts/setup.sh; writes the benchmark tables to $1 (default: output/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-output/gpu_check}
mkdir -p "$out"
python=.venv/bin/python
$python -c 'import torch; print("gpu:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none (torch.cuda.is_available() is False)")'
status=0
$python -m pytest -q -n 0 -m cuda -p no:cacheprovider tests/test_cuda.py || status=1
if $python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  $python tools/benchmark.py speed --device cuda --size 448 448 --batch 2 --warmup 3 --repeats 10 \
    --mit B0 B1 --swin T --hatnet T | tee "$out/speed.md" || status=1
  $python tools/benchmark.py hila-cost --device cuda --warmup 3 --repeats 10 --compile \
    | tee "$out/hila_cost.md" || status=1
else
  echo "gpu_check: no CUDA GPU, benchmarks left out"
fi
exit $status
