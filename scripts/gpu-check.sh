#!/usr/bin/env bash
# The GPU check: runs on the GPU machine (no Rust, no network) from the
# repository root, with gpu-bundle/ built here by scripts/gpu-bundle.sh.
# In under 8 minutes it runs every GPU test, times each kernel (CUDA events,
# warm-up, median of repeats, inputs larger than L2) and a short dense
# training run and inference throughput, and writes one report: $OUT/report.md and $OUT/report.json
# (plus every step's full log under $OUT/logs/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-report}"
mkdir -p "$OUT/logs"
B=gpu-bundle
if [[ ! -x $B/bin/switchyard ]]; then
    echo "error: $B/ is missing; build it with scripts/gpu-bundle.sh and carry it" >&2
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
step test-parity 180 $B/tests/cuda_parity --test-threads=1
step test-train 240 $B/tests/cuda_train --test-threads=1
SWITCHYARD_BENCH_JSON="$OUT/cuda_ops.json" step bench-kernels 240 $B/benches/cuda_ops --bench
step train-dense-tiny 120 $B/bin/switchyard train --device cuda --quiet --set model.moe_every=0 \
    --set train.steps=300 --out "$OUT/run-dense-tiny"
step bench-dense-small 90 $B/bin/switchyard bench --device cuda --preset small --set model.moe_every=0 \
    --steps 20 --json "$OUT/bench-dense-small.json"
step bench-generate 90 $B/bin/switchyard bench --generate --device cuda --preset small --set model.moe_every=0 \
    --batch-sizes 1,8,64 --json "$OUT/bench-generate.json"

{
    echo
    for s in test-build test-parity test-train; do
        echo "## $s"
        echo '```'
        grep -E "^test |test result|panicked|assert|error" "$OUT/logs/$s.log" | head -60
        echo '```'
    done
    echo "## kernel benchmarks (median of 20 event-timed runs; fraction of the measured ceilings)"
    echo '```'
    sed -n '/^group /,$p' "$OUT/logs/bench-kernels.log" | head -60
    echo '```'
    echo "## dense tiny training on CUDA (300 steps)"
    echo '```'
    tail -6 "$OUT/logs/train-dense-tiny.log"
    echo '```'
    echo "## dense small: step time"
    echo '```'
    tail -3 "$OUT/logs/bench-dense-small.log"
    echo '```'
    echo "## dense small: prefill / decode tokens/s"
    echo '```'
    tail -5 "$OUT/logs/bench-generate.log"
    echo '```'
} >> "$md"
(IFS=,; echo "{\"steps\": [${steps_json[*]}]}") > "$OUT/report.json"
cat "$md" | tail -80
