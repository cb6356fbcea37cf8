#!/usr/bin/env bash
# The GPU table of docs/benchmarks.md ("scenecls against PyTorch on an accelerator") in one command, on a
# CUDA machine with JAX, flax, optax, orbax, torch and torchvision but no TensorFlow, tfds or ml_collections.
#
#   where pip reaches PyPI, once:  bash experiments/gpu_bench.sh --prepare   (wheels/ml_collections-*.whl)
#   on the GPU machine, repo root: bash experiments/gpu_bench.sh [more benchmark.py --accelerator options]
#
# Carry wheels/ (git-ignored) along with the checkout. Within 8 minutes on one H100/H200: each of the two
# measurement processes is stopped at its time limit (4.5 + 2.5 min) and keeps the figures it had measured;
# bfloat16 comes first. The section is written into docs/benchmarks.md of that checkout: copy it back.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--prepare" ]]; then
  python3 -m pip wheel --no-deps -w wheels ml_collections
  exit
fi
if ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/scenecls_site wheels/ml_collections-*.whl
  export PYTHONPATH="/tmp/scenecls_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH}" PYTHONUNBUFFERED=1
python3 experiments/benchmark.py --accelerator --dtypes bfloat16,float32 --torch-compile-dtypes bfloat16 \
  --jax-timeout 270 --torch-timeout 150 "$@"
