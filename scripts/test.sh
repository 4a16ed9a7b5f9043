#!/usr/bin/env bash
# Runs every check switchyard has, on a fresh machine with a Rust toolchain
# (rustup, cargo) and python3 with pip. Crates come from crates.io, the CUDA
# compiler from PyPI (no GPU, no root needed):
#   0. the pinned CUDA toolchain into .toolchain/cuda (scripts/cuda-toolchain.sh),
#      so every kernel is compiled and build-checked (SASS, spills) on every run;
#      SWITCHYARD_NO_CUDA=1 skips it and builds the CPU-only engine
#   1. formatting (cargo fmt --check)
#   2. lints (cargo clippy --all-targets, warnings are errors)
#   3. the benchmarks compile
#   4. every test: unit, integration (gradients, router invariants,
#      convergence, determinism, resume, checkpoints, CLI, bad input), doc
#   5. the GPU tests on the SIMT emulator (scripts/emu-test.sh; needs g++):
#      every kernel against its CPU reference, without a GPU; skipped with
#      SWITCHYARD_NO_CUDA=1 (no kernels to run) or SWITCHYARD_NO_EMU=1
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

if [[ -z "${SWITCHYARD_NO_CUDA:-}" ]]; then
    echo "== CUDA toolchain"
    if scripts/cuda-toolchain.sh; then
        # The build-check tests must then find every kernel compiled.
        export SWITCHYARD_REQUIRE_KERNELS=1
    elif [[ -n "${CI:-}" ]]; then
        echo "error: the CUDA toolchain did not install; CI must compile the kernels" >&2
        exit 1
    else
        echo "warning: no CUDA toolchain; testing the CPU-only build (kernels not compiled)" >&2
    fi
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo bench --no-run"
cargo bench --no-run --quiet
echo "== cargo test"
log=$(mktemp)
cargo test --quiet 2>&1 | tee "$log"
# One closing line over every test binary (cargo prints one per binary).
# Skipped tests (GPU tests without a GPU) pass, but print a "skipped:" line each.
summary=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     /skipped: [A-Za-z_]/ { s += 1 }
     END { printf "tests: %d passed (%d of them skipped, see the \"skipped:\" lines), %d failed\n", p, s, f }' "$log")
rm -f "$log"
if [[ -z "${SWITCHYARD_NO_CUDA:-}" && -z "${SWITCHYARD_NO_EMU:-}" ]]; then
    echo "== GPU tests on the SIMT emulator (scripts/emu-test.sh)"
    emu_log=$(mktemp)
    scripts/emu-test.sh 2>&1 | tee "$emu_log"
    summary="$summary; $(tail -1 "$emu_log")"
    rm -f "$emu_log"
fi
echo "$summary"
