#!/usr/bin/env bash
# The device check of issue 16: every GPU figure in one run, at most 8 minutes on one H200.
#   benchmarks/gpu_check.sh                on the device machine (prints the figures, exits non-zero
#                                          if any failed to run or the 480 s timeout hit: 124)
#   benchmarks/gpu_check.sh --dry          anywhere: CPU, tiny shapes, the same code paths in seconds
# Arguments go to benchmarks/gpu_check.py (--only NAME[,NAME], --steps N, --compile; see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."

# The project's own set-up only (a no-op when .venv is current): nothing else is installed.
make .venv/.installed

nvidia-smi -L || echo "nvidia-smi -L failed: no NVIDIA driver here?"
.venv/bin/python -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")'

# Offline: the device machine reaches no hub, and nothing in the check needs one.
export HF_HUB_OFFLINE=1
exec timeout 480 .venv/bin/python benchmarks/gpu_check.py "$@"
