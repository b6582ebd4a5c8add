#!/usr/bin/env bash
# The GPU check (issue 17), about ten minutes on one CUDA GPU. Nothing here has run on a GPU yet: the
# project's machines have none, so the GPU paths (CUDA kernels, bf16 on CUDA, flash_attention_2) are
# unverified until someone runs this and records the result in benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh                 # with the project's .venv (needs a CUDA build of torch)
#   PY=/path/to/python bash benchmarks/gpu_check.sh
#
# It runs, on CUDA:
#   - tests/test_gpu.py (marker `gpu`): greedy generation equal to model.generate and left padding that never
#     changes a row, for Llama, Qwen2, GPT-2, GPT-NeoX and OPT under eager and sdpa (float32) and
#     flash_attention_2 (bf16) where flash-attn is installed; one bf16 training step per stage (SFT, reward
#     model, DPO, PPO) through the CLI;
#   - every other test marked `gpu` (other numerics checks add themselves with the marker);
#   - the CPU-only generation, kernel, sampler and bf16 tests once more on this machine's CPU.
# and prints the GPU, the versions, what passed and how long it took: paste that into benchmarks/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOG=${LOG:-runs/gpu_check.log}
mkdir -p "$(dirname "$LOG")"

"$PY" - <<'PYEOF' || exit 2
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch " + torch.__version__ + "; the project's Makefile installs the "
             "CPU wheel: install a CUDA build of torch into this environment first)")
import transformers
try:
    import flash_attn
    fa = flash_attn.__version__
except ImportError:
    fa = "not installed (flash_attention_2 tests skip)"
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"transformers {transformers.__version__}; flash-attn {fa}")
PYEOF

start=$(date +%s)
"$PY" -m pytest -q -rs -m gpu tests/ 2>&1 | tee "$LOG"
gpu_status=${PIPESTATUS[0]}
"$PY" -m pytest -q tests/test_generate_kernels.py tests/test_sampler.py tests/test_ppo_old_logprobs.py \
    tests/test_rollout_generate.py 2>&1 | tail -3 | tee -a "$LOG"
cpu_status=${PIPESTATUS[0]}
elapsed=$(( $(date +%s) - start ))
echo "gpu_check: gpu tests exit ${gpu_status}, cpu tests exit ${cpu_status}, ${elapsed} s (log: ${LOG})"
[ "$gpu_status" -eq 0 ] && [ "$cpu_status" -eq 0 ]
