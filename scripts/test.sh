#!/usr/bin/env bash
# Runs every check switchyard has, on a fresh machine with a Rust toolchain
# (rustup, cargo). Needs nothing else: all crates come from crates.io.
#   1. formatting (cargo fmt --check)
#   2. lints (cargo clippy --all-targets, warnings are errors)
#   3. the benchmarks compile
#   4. every test: unit, integration (gradients, router invariants,
#      convergence, determinism, resume, checkpoints, CLI, bad input), doc
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
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
