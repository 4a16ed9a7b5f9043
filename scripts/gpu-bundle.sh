#!/usr/bin/env bash
# Build everything the GPU check needs, here (the GPU machine has no Rust and
# no network), into the git-ignored gpu-bundle/:
#   gpu-bundle/bin/switchyard            release CLI with the embedded kernels
#   gpu-bundle/tests/cuda_*              the GPU test binaries (release)
#   gpu-bundle/benches/cuda_{ops,moe}    the CUDA kernel and MoE layer benchmarks
#   gpu-bundle/MANIFEST                  commit, date, nvcc, sizes
# and the same as gpu-bundle.tar.xz (about 15 MiB; the folder is over the
# device tool's 64 MiB carry limit, mostly the kernels embedded in every binary).
# Then, on the GPU machine, from the repository root:
#   scripts/gpu-check.sh                 (unpacks the archive if needed; writes $OUT/report.md and report.json)
# With the `device` tool: run(command="scripts/gpu-check.sh", carry=["gpu-bundle.tar.xz"]).
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
cargo test --release --no-run --message-format=json --test cuda_parity --test cuda_moe --test cuda_train \
    --test cuda_build 2>/dev/null |
    executables cuda_parity,cuda_moe,cuda_train,cuda_build |
    while read -r name exe; do cp "$exe" "gpu-bundle/tests/$name"; done
echo "== CUDA benchmarks"
cargo bench --no-run --message-format=json --bench cuda_ops --bench cuda_moe 2>/dev/null |
    executables cuda_ops,cuda_moe |
    while read -r name exe; do cp "$exe" "gpu-bundle/benches/$name"; done

# Debug info is most of the size.
for f in gpu-bundle/bin/* gpu-bundle/tests/* gpu-bundle/benches/*; do
    strip --strip-all "$f"
done
for t in cuda_parity cuda_moe cuda_train cuda_build; do
    [[ -x gpu-bundle/tests/$t ]] || { echo "error: test binary $t was not built" >&2; exit 1; }
done
for b in cuda_ops cuda_moe; do
    [[ -x gpu-bundle/benches/$b ]] || { echo "error: bench binary $b was not built" >&2; exit 1; }
done
{
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!gpu-bundle' || echo ' (dirty)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nvcc: $(.toolchain/cuda/nvidia/cu13/bin/nvcc --version | grep release)"
    du -b gpu-bundle/bin/* gpu-bundle/tests/* gpu-bundle/benches/* | awk '{ printf "%s %.1f MiB\n", $2, $1 / 1048576 }'
} > gpu-bundle/MANIFEST
cat gpu-bundle/MANIFEST
rm -f gpu-bundle.tar.xz
python3 -c 'import tarfile; t = tarfile.open("gpu-bundle.tar.xz", "w:xz"); t.add("gpu-bundle"); t.close()'
echo "total: $(du -sh gpu-bundle | cut -f1); gpu-bundle.tar.xz $(du -h gpu-bundle.tar.xz | cut -f1) (carry limit 64 MiB)"
