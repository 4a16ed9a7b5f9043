#!/usr/bin/env bash
# Install the pinned CUDA compiler (DESIGN.md §5) into .toolchain/cuda, from
# PyPI wheels: no root, no GPU, no system toolkit needed. Idempotent: a
# complete install is detected by its stamp file and left alone.
#
#   scripts/cuda-toolchain.sh          # install (or confirm) the toolchain
#   scripts/cuda-toolchain.sh --print  # print the nvcc path it provides
#
# build.rs looks here after NVCC, CUDA_HOME and PATH, so a user with a system
# CUDA 12.8+/13 toolkit needs none of this.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.toolchain/cuda"
# Bump the stamp when the pin list changes so old installs are replaced.
stamp="$dest/.installed-v1"
pins=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
  # SASS inspection for the build checks: no 13.0 wheels exist, 13.2 reads
  # 13.0 fatbins; cuobjdump needs nvdisasm on PATH.
  "nvidia-cuda-cuobjdump==13.2.*"
  "nvidia-cuda-nvdisasm==13.2.*"
)
nvcc="$dest/nvidia/cu13/bin/nvcc"
if [[ "${1:-}" == "--print" ]]; then
  [[ -f "$stamp" ]] && echo "$nvcc" && exit 0
  echo "not installed: run scripts/cuda-toolchain.sh" >&2
  exit 1
fi
if [[ -f "$stamp" && -x "$nvcc" ]]; then
  echo "cuda toolchain: present ($("$nvcc" --version | tail -2 | head -1))"
  exit 0
fi
python="${PYTHON:-python3}"
if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "error: scripts/cuda-toolchain.sh needs python3 with pip (set PYTHON=...)" >&2
  exit 1
fi
rm -rf "$dest"
mkdir -p "$dest"
echo "cuda toolchain: installing ${#pins[@]} wheels into .toolchain/cuda"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" "${pins[@]}"
# Wheels drop the executable bit on some pip versions.
chmod +x "$dest"/nvidia/cu13/bin/* "$dest"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
"$nvcc" --version | tail -2 | head -1
touch "$stamp"
