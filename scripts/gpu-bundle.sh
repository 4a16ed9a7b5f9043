#!/usr/bin/env bash
# Build everything the GPU check needs, here (the GPU machine has no Rust and
# no network), into the git-ignored gpu-bundle/:
#   gpu-bundle/bin/switchyard            release CLI with the embedded kernels
#   gpu-bundle/tests/cuda_*              the GPU test binaries (release)
#   gpu-bundle/benches/cuda_ops          the CUDA kernel benchmarks
#   gpu-bundle/MANIFEST                  commit, date, nvcc, sizes
# Then, on the GPU machine, from the repository root:
#   scripts/gpu-check.sh                 (writes $OUT/report.md and report.json)
# With the `device` tool: run(command="scripts/gpu-check.sh", carry=["gpu-bundle"]).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/cuda-toolchain.sh >/dev/null
export SWITCHYARD_REQUIRE_KERNELS=1
rm -rf gpu-bundle
mkdir -p gpu-bundle/bin gpu-bundle/tests gpu-bundle/benches

echo "== release CLI"
cargo build --release --quiet --bin switchyard
cp target/release/switchyard gpu-bundle/bin/

# Executables of cargo's JSON build messages, filtered by target name.
executables() {
    python3 -c '
import json, sys
want = set(sys.argv[1].split(","))
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want:
        print(m["target"]["name"], m["executable"])
' "$1"
}

echo "== GPU test binaries (release)"
cargo test --release --no-run --message-format=json --test cuda_parity --test cuda_train --test cuda_build 2>/dev/null |
    executables cuda_parity,cuda_train,cuda_build |
    while read -r name exe; do cp "$exe" "gpu-bundle/tests/$name"; done
echo "== CUDA benchmarks"
cargo bench --no-run --message-format=json --bench cuda_ops 2>/dev/null |
    executables cuda_ops |
    while read -r name exe; do cp "$exe" "gpu-bundle/benches/$name"; done

# Debug info is most of the size; the carry limit is 64 MiB.
for f in gpu-bundle/bin/* gpu-bundle/tests/* gpu-bundle/benches/*; do
    objcopy --strip-debug "$f"
done
for t in cuda_parity cuda_train cuda_build; do
    [[ -x gpu-bundle/tests/$t ]] || { echo "error: test binary $t was not built" >&2; exit 1; }
done
[[ -x gpu-bundle/benches/cuda_ops ]] || { echo "error: bench binary cuda_ops was not built" >&2; exit 1; }
{
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!gpu-bundle' || echo ' (dirty)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nvcc: $(.toolchain/cuda/nvidia/cu13/bin/nvcc --version | grep release)"
    du -b gpu-bundle/bin/* gpu-bundle/tests/* gpu-bundle/benches/* | awk '{ printf "%s %.1f MiB\n", $2, $1 / 1048576 }'
} > gpu-bundle/MANIFEST
cat gpu-bundle/MANIFEST
echo "total: $(du -sh gpu-bundle | cut -f1) (carry limit 64 MiB)"
