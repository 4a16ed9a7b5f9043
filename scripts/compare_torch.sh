#!/usr/bin/env bash
# Training-step speed of switchyard's CPU backend against PyTorch eager on
# the same model, batch and thread count. The two are run alternately,
# ROUNDS times each, because a shared 2-core machine is noisy; the table
# reports the median over rounds of each run's median step time.
#
# Needs a Python with torch (see the install recipe at the top of
# scripts/torch_reference.py). Usage:
#   PYTHON=/path/to/python scripts/compare_torch.sh [tiny small] > result.md
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
presets=${*:-tiny small}
cargo build --release --quiet
out=$(mktemp -d)
for p in $presets; do
    ./target/release/switchyard config --preset "$p" > "$out/$p.toml"
    steps=20; [ "$p" = tiny ] || steps=8
    for r in $(seq "$ROUNDS"); do
        ./target/release/switchyard bench --config "$out/$p.toml" --threads "$THREADS" --steps "$steps" --json "$out/sy-$p-$r.json" >&2
        "$PYTHON" scripts/torch_reference.py --config "$out/$p.toml" --threads "$THREADS" --steps "$steps" --adamw fused --json "$out/pt-$p-$r.json" >&2
    done
done
"$PYTHON" - "$out" $presets <<'PY'
import glob, json, statistics, sys
out, presets = sys.argv[1], sys.argv[2:]
print("| preset | switchyard step (ms) | PyTorch eager step (ms) | switchyard tokens/s | PyTorch tokens/s | speedup |")
print("|---|---|---|---|---|---|")
for p in presets:
    sy = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/sy-{p}-*.json"))]
    pt = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/pt-{p}-*.json"))]
    s = statistics.median(r["median_ms"] for r in sy)
    t = statistics.median(r["step_time_median_s"] * 1e3 for r in pt)
    tok = sy[0]["tokens_per_step"]
    print(f"| {p} | {s:.1f} | {t:.1f} | {tok/s*1e3:,.0f} | {tok/t*1e3:,.0f} | {t/s:.2f}x |")
PY
