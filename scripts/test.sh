#!/usr/bin/env bash
# Runs every check switchyard has, on a fresh machine with a Rust toolchain
# (rustup, cargo). Needs nothing else: all crates come from crates.io.
#   1. formatting (cargo fmt --check)
#   2. lints (cargo clippy --all-targets, warnings are errors)
#   3. every test: unit, integration (gradients, router invariants,
#      convergence, determinism, resume, checkpoints, CLI, bad input), doc
#   4. the benchmarks compile
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
echo "== cargo test"
cargo test --quiet
echo "== cargo bench --no-run"
cargo bench --no-run --quiet
