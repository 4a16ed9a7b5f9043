#!/usr/bin/env bash
# Run the GPU tests on the SIMT emulator (tests/emu/README.md): every kernel
# of kernels/*.cu, compiled for the CPU, behind a stand-in libcuda/libcublas,
# so the real CUDA backend, launchers and tests run unchanged on a machine
# without a GPU. This checks kernel logic (indexing, synchronization, ragged
# tails, fragment layouts, the launch shapes) against the CPU reference; it
# does not check speed, and it is not a GPU (tests/emu/README.md says where it
# differs).
#
#   scripts/emu-test.sh            # kernel parity tests + the small end-to-end run
#   scripts/emu-test.sh --all      # also the tiny end-to-end runs (tens of minutes)
#
# Needs g++ (C++17) and python3. The tests must find the emulator: a skip
# is a failure here (SWITCHYARD_REQUIRE_GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
emu=$(tests/emu/build.sh)
export LD_LIBRARY_PATH="$emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SWITCHYARD_REQUIRE_GPU=1
# No progress bar: its carriage returns would garble the summary line of scripts/test.sh.
export CARGO_TERM_PROGRESS_WHEN=never
filter=(moe_micro)
[[ "${1:-}" == "--all" ]] && filter=()
log=$(mktemp)
# One launch at a time in the emulator anyway; one test thread keeps the
# output in order.
cargo test --quiet --test cuda_parity --test cuda_moe -- --test-threads=1 2>&1 | tee "$log"
cargo test --quiet --test cuda_train -- --test-threads=1 "${filter[@]}" 2>&1 | tee -a "$log"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "emulated GPU tests: %d passed, %d failed\n", p, f; exit f > 0 }' "$log"
rm -f "$log"
