#!/usr/bin/env bash
# The GPU path in one run (issue #15, item 8), under 10 minutes on a GPU host that can
# reach the package registries: set-up with vLLM's GPU build, then the demo's closed loop
# (bootstrap on the GPU, vLLM serving with bf16 where supported, retraining and the
# champion/challenger evaluation on the same GPU beside vLLM's memory share), then the
# gateway bench against that vLLM. Prints the figures; leaves the stack down.
#
#   bench/gpu_check.sh            # REFINERY_VLLM_GPU_MEMORY_UTILIZATION (default 0.5) is
#                                 # vLLM's share; the retrainer takes from the rest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
nvidia-smi -L || { echo "gpu_check: no GPU here (nvidia-smi)"; exit 2; }
export REFINERY_VLLM_BACKEND=gpu
export REFINERY_VAR_DIR="${REFINERY_VAR_DIR:-$(mktemp -d)/var}"
started=$SECONDS
stamp() { echo "gpu_check: $* (+$((SECONDS - started)) s)"; }

make setup
.venv/bin/python - <<'PY'
import torch
assert torch.cuda.is_available(), "the main venv's torch sees no CUDA device"
print(f"gpu_check: training on {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
PY
stamp "set up"
trap './refinery down >/dev/null 2>&1 || true' EXIT
# Bootstrap, serving, drift, one retraining and evaluation on the GPU, promotion: the demo.
timeout 480 ./refinery demo --fresh
stamp "closed loop done"
grep -h "retrainer: training on" "$REFINERY_VAR_DIR"/log/retrainer*.log | tail -1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
.venv/bin/python -m bench.gateway
stamp "gateway bench done"
