#!/usr/bin/env bash
# The GPU check: runs on the GPU machine (no Rust, no network) from the
# repository root, with gpu-bundle/ built here by scripts/gpu-bundle.sh.
# In under 8 minutes it runs every GPU test, times each kernel (CUDA events,
# warm-up, median of repeats, inputs larger than L2) and one Switch MoE layer
# at Switch-Base sizes phase by phase, short dense and MoE training runs and
# inference throughput, and writes one report: $OUT/report.md and
# $OUT/report.json (plus every step's full log under $OUT/logs/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-report}"
mkdir -p "$OUT/logs"
B=gpu-bundle
if [[ ! -x $B/bin/switchyard && -f gpu-bundle.tar.xz ]]; then
    # python3's tarfile, not tar -J: the GPU image may lack xz.
    python3 -c 'import tarfile; tarfile.open("gpu-bundle.tar.xz").extractall()'
fi
if [[ ! -x $B/bin/switchyard ]]; then
    echo "error: $B/ is missing; build it with scripts/gpu-bundle.sh and carry gpu-bundle.tar.xz" >&2
    exit 2
fi
export SWITCHYARD_ROOT="$PWD"
# On the GPU machine a missing GPU is a failure, not a skip.
export SWITCHYARD_REQUIRE_GPU=1
# cuBLAS: the system toolkit's, else the nvidia-cublas wheel's.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas.so.13'; then
    lib=$(find / -xdev \( -path /proc -o -path /sys \) -prune -o -name 'libcublas.so.13*' -print 2>/dev/null | head -1)
    [[ -n "$lib" ]] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

steps_json=()
md="$OUT/report.md"
{
    echo "# switchyard GPU check"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    sed 's/^/- bundle /' $B/MANIFEST | head -3
    echo "- gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | head -1)"
    echo "- cublas: ${LD_LIBRARY_PATH:-system}"
    echo
    echo "| step | status | seconds |"
    echo "| --- | --- | --- |"
} > "$md"

# step NAME TIMEOUT CMD...: run, log, record status and time.
step() {
    local name=$1 limit=$2
    shift 2
    local log="$OUT/logs/$name.log" t0 t1 rc
    t0=$(date +%s.%N)
    timeout "$limit" "$@" > "$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    local secs status
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    case $rc in 0) status=ok ;; 124) status="timeout (${limit}s)" ;; *) status="FAILED (rc $rc)" ;; esac
    echo "| $name | $status | $secs |" >> "$md"
    steps_json+=("{\"step\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $secs}")
    echo "[$name] $status in ${secs}s"
}

step kernels 30 $B/bin/switchyard kernels
step test-build 60 $B/tests/cuda_build --test-threads=1
step test-parity 120 $B/tests/cuda_parity --test-threads=1
step test-moe 120 $B/tests/cuda_moe --test-threads=1
step test-train 240 $B/tests/cuda_train --test-threads=1
SWITCHYARD_BENCH_JSON="$OUT/cuda_ops.json" step bench-kernels 180 $B/benches/cuda_ops --bench
SWITCHYARD_BENCH_JSON="$OUT/cuda_moe.json" step bench-moe 180 $B/benches/cuda_moe --bench
step train-moe-tiny 120 $B/bin/switchyard train --device cuda --quiet --set train.steps=300 --out "$OUT/run-moe-tiny"
step train-dense-tiny 90 $B/bin/switchyard train --device cuda --quiet --set model.moe_every=0 \
    --set train.steps=300 --out "$OUT/run-dense-tiny"
step bench-moe-small 90 $B/bin/switchyard bench --device cuda --preset small --steps 20 --json "$OUT/bench-moe-small.json"
step bench-dense-small 60 $B/bin/switchyard bench --device cuda --preset small --set model.moe_every=0 \
    --steps 20 --json "$OUT/bench-dense-small.json"
step bench-generate 60 $B/bin/switchyard bench --generate --device cuda --preset small \
    --batch-sizes 1,8,64 --json "$OUT/bench-generate.json"

{
    echo
    for s in test-build test-parity test-moe test-train; do
        echo "## $s"
        echo '```'
        grep -E "^test |test result|panicked|assert|error" "$OUT/logs/$s.log" | head -60
        echo '```'
    done
    echo "## kernel benchmarks (median of 20 event-timed runs; fraction of the measured ceilings)"
    echo '```'
    sed -n '/^group /,$p' "$OUT/logs/bench-kernels.log" | head -60
    echo '```'
    echo "## MoE layer fwd+bwd at Switch-Base sizes (16k tokens, d 768, d_ff 3072; median of 10)"
    echo '```'
    grep -E "^(layer|E[0-9])" "$OUT/logs/bench-moe.log" | head -20
    echo '```'
    echo "## MoE tiny training on CUDA (300 steps)"
    echo '```'
    tail -6 "$OUT/logs/train-moe-tiny.log"
    echo '```'
    echo "## dense tiny training on CUDA (300 steps)"
    echo '```'
    tail -6 "$OUT/logs/train-dense-tiny.log"
    echo '```'
    echo "## small (MoE, then dense): step time"
    echo '```'
    tail -3 "$OUT/logs/bench-moe-small.log"
    tail -3 "$OUT/logs/bench-dense-small.log"
    echo '```'
    echo "## small MoE: prefill / decode tokens/s"
    echo '```'
    tail -5 "$OUT/logs/bench-generate.log"
    echo '```'
} >> "$md"
(IFS=,; echo "{\"steps\": [${steps_json[*]}]}") > "$OUT/report.json"
cat "$md" | tail -80
