#!/usr/bin/env bash
# Probe a switchyard binary with the failure cases of the reliability issue
# (lost runs, silent wrong results, crashes on bad input) and print one
# markdown table row per case: what the command exited with and what it said
# or did. Run it on an old and a new binary to fill the before/after table of
# experiments/results/2026-12-02-reliability.md:
#
#   scripts/reliability-probe.sh target/release/switchyard > after.md
#
# Needs bash, python3 and coreutils; the full-disk case needs `unshare -m`
# and tmpfs (root), and is reported as skipped otherwise. Takes about a minute.
set -uo pipefail
BIN=$(realpath "${1:?usage: reliability-probe.sh BIN}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
SMALL=(--set model.n_layer=2 --set model.d_model=32 --set model.n_head=2 --set model.d_ff=64
       --set model.max_seq_len=32 --set train.seq_len=32 --set train.batch_size=4 --set train.eval_batches=2)
row() { printf '| %s | %s | %s |\n' "$1" "$2" "$(echo "$3" | tr '\n|' ' /' | cut -c1-300)"; }
err() { grep -v '^device auto' "$1" | grep -v '^ *$' | tail -n "${2:-1}"; }
# A v1 checkpoint (checksum over tensor bytes only) with edited metadata:
# the format both old and new binaries read.
edit_ckpt() { # DIR PYTHON-EXPR-ON-META(dict m, config dict c)
python3 - "$1" "$2" <<'PY'
import json, struct, sys
d, expr = sys.argv[1], sys.argv[2]
for f in ["model.safetensors", "optimizer.safetensors"]:
    p = f"{d}/{f}"
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    data = b[8 + n:]
    m = h["__metadata__"]
    c = json.loads(m["config"]) if "config" in m else None
    exec(expr)
    if c is not None:
        m["config"] = json.dumps(c, separators=(",", ":"))
    m["format"] = "switchyard-v1"
    hh = 0xcbf29ce484222325
    for name in sorted(k for k in h if k != "__metadata__"):
        s, e = h[name]["data_offsets"]
        for x in data[s:e]:
            hh = ((hh ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    m["checksum"] = f"{hh:016x}"
    hb = json.dumps(h, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + data)
PY
}

echo "| case | exit | what happened |"
echo "|---|---|---|"

# 1. Checkpoint pruning past step 999,999.
"$BIN" train --quiet --out p1 "${SMALL[@]}" --set train.steps=2 >/dev/null 2>&1
mv p1/ckpt-000002 p1/ckpt-999998 && printf ckpt-999998 > p1/latest
edit_ckpt p1/ckpt-999998 'm["step"] = "999998"
if "rng" in m: m["rng"] = json.dumps({"seed": json.loads(m["rng"])["seed"], "next_step": 999998})'
"$BIN" train --quiet --resume p1 --set train.steps=1000001 --set train.checkpoint_every=1 --set train.keep_checkpoints=2 >/dev/null 2>p1.err
rc=$?
row "prune past step 999,999" "$rc" "checkpoints left: $(ls -d p1/ckpt-* | xargs -n1 basename | tr '\n' ' '); latest -> $(cat p1/latest) (exists: $([[ -d p1/$(cat p1/latest) ]] && echo yes || echo NO))"

# 2. Resuming a finished run.
"$BIN" train --quiet --out p2 "${SMALL[@]}" --set train.steps=2 >/dev/null 2>&1
before=$(md5sum p2/summary.json p2/metrics.jsonl p2/config.toml | md5sum)
"$BIN" train --resume p2 >p2.out 2>p2.err; rc=$?
after=$(md5sum p2/summary.json p2/metrics.jsonl p2/config.toml | md5sum)
row "resume a finished run" "$rc" "$(err p2.err); files $([[ $before == "$after" ]] && echo unchanged || echo CHANGED): summary final_loss $(python3 -c 'import json;print(json.load(open("p2/summary.json"))["final_loss"])')"

# 3. A sweep point whose summary.json is missing.
cat > s3.toml <<EOF
name = "s3"
[set]
"model.n_layer" = 2
"model.d_model" = 32
"model.n_head" = 2
"model.d_ff" = 64
"model.max_seq_len" = 32
"train.seq_len" = 32
"train.batch_size" = 4
"train.eval_batches" = 2
"train.steps" = 4
[axes]
"model.n_experts" = [2]
EOF
"$BIN" sweep s3.toml --out p3 --quiet >/dev/null 2>&1
rm p3/00-*/summary.json
"$BIN" sweep s3.toml --out p3 --quiet >/dev/null 2>p3.err; rc=$?
row "sweep point without summary.json" "$rc" "re-run: results row val_loss = $(python3 -c 'import json;print(json.loads(open("p3/results.jsonl").readline()).get("val_loss"))'), summary.json $([[ -f p3/00-n_experts=2/summary.json ]] && echo rewritten || echo missing)"

# 4. A run killed before its first checkpoint.
"$BIN" train --quiet --out p4 "${SMALL[@]}" --set train.steps=100000 --set train.checkpoint_every=0 >/dev/null 2>&1 &
pid=$!; sleep 2; kill -9 $pid; wait $pid 2>/dev/null
"$BIN" train --quiet --out p4 "${SMALL[@]}" --set train.steps=3 >/dev/null 2>p4a.err; rca=$?
"$BIN" train --quiet --resume p4 --set train.steps=3 >/dev/null 2>p4b.err; rcb=$?
row "killed before the first checkpoint" "--out $rca, --resume $rcb" "--out: $(err p4a.err) // --resume: $(err p4b.err)"

# 5. A failing sweep point.
sed 's/"model.n_experts" = \[2\]/"data.source" = ["synthetic", "missing.txt", "synthetic"]/' s3.toml > s5.toml
"$BIN" sweep s5.toml --out p5 --quiet >/dev/null 2>p5.err; rc=$?
row "a failing sweep point" "$rc" "$(err p5.err) // results rows: $(wc -l < p5/results.jsonl 2>/dev/null || echo none)"

# 6. A full disk during a checkpoint write (a 1.5 MiB tmpfs).
if unshare -m sh -c 'mount -t tmpfs -o size=64k tmpfs /mnt' 2>/dev/null; then
    mkdir -p disk
    unshare -m bash -c "
        mount -t tmpfs -o size=1536k tmpfs $WORK/disk
        '$BIN' train --quiet --out $WORK/disk/run ${SMALL[*]} --set train.steps=8 --set train.checkpoint_every=2 --set train.keep_checkpoints=2 >/dev/null 2>$WORK/p6a.err; echo \$? > $WORK/p6a.rc
        ls $WORK/disk/run > $WORK/p6.ls
        dd if=/dev/zero of=$WORK/disk/filler bs=4k 2>/dev/null
        '$BIN' train --quiet --resume $WORK/disk/run >/dev/null 2>$WORK/p6b.err; echo \$? > $WORK/p6b.rc"
    row "full disk during a checkpoint" "$(cat p6a.rc), resume $(cat p6b.rc)" "$(err p6a.err) // left: $(grep -c tmp p6.ls) .tmp // resume on the full disk: $(err p6b.err)"
else
    row "full disk during a checkpoint" "-" "skipped: unshare/tmpfs not available"
fi

# 7. Two processes writing one run directory.
"$BIN" train --quiet --out p7 "${SMALL[@]}" --set train.steps=100000 --set train.checkpoint_every=50 >/dev/null 2>&1 &
pid=$!; sleep 2
"$BIN" train --quiet --out p7 "${SMALL[@]}" --set train.steps=20 >/dev/null 2>p7.err; rc=$?
kill -INT $pid; wait $pid 2>/dev/null
row "two trainers, one directory" "second: $rc" "$(err p7.err)"

# 8. Checkpoint metadata not covered by the checksum: batch_size 4 -> 5 in the header.
"$BIN" train --quiet --out p8 "${SMALL[@]}" --set train.steps=2 >/dev/null 2>&1
python3 - <<'PY'
p = "p8/ckpt-000002/model.safetensors"
b = open(p, "rb").read()
old, new = b'\\"batch_size\\":4', b'\\"batch_size\\":5'
assert old in b, "batch_size is in the stored config"
open(p, "wb").write(b.replace(old, new, 1))
PY
"$BIN" eval --checkpoint p8 --json >p8.out 2>p8.err; rc=$?
row "header bit flip (batch_size 4 -> 5)" "$rc" "$(err p8.err) $(python3 -c 'import json,sys;print("eval ran on", json.load(open("p8.out"))["tokens"], "tokens (256 = batch 4, 320 = batch 5)")' 2>/dev/null)"

# 9-10. generate: a tiny temperature, a huge --max-new-tokens.
"$BIN" train --quiet --out p9 "${SMALL[@]}" --set train.steps=2 >/dev/null 2>&1
"$BIN" generate --checkpoint p9 --prompt "1 2 3" --max-new-tokens 8 --temperature 0 >p9g.out 2>/dev/null
"$BIN" generate --checkpoint p9 --prompt "1 2 3" --max-new-tokens 8 --temperature 1e-320 >p9.out 2>p9.err; rc=$?
row "generate --temperature 1e-320" "$rc" "$(head -c 80 p9.out) ($(cmp -s p9.out p9g.out && echo same as greedy || echo NOT greedy)) $(err p9.err)"
"$BIN" generate --checkpoint p9 --prompt "1 2 3" --max-new-tokens 18446744073709551615 >p10.out 2>p10.err; rc=$?
row "generate --max-new-tokens 2^64-1" "$rc" "stdout: $(wc -c < p10.out) bytes; $(err p10.err)"

# 11. A tokenizer smaller than the model's vocabulary.
python3 - <<'PY'
import json
vocab = {"[UNK]": 0, "hello": 1, "world": 2, "the": 3, "quick": 4}
tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
       "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
       "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}}
json.dump(tok, open("tok.json", "w"))
open("corpus.txt", "w").write("hello world the quick " * 400)
PY
"$BIN" train --quiet --out p11 "${SMALL[@]}" --set train.steps=2 --set data.tokenizer=tok.json --data corpus.txt >/dev/null 2>&1
"$BIN" generate --checkpoint p11 --prompt "hello world" --max-new-tokens 20 --seed 3 >p11.out 2>p11.err; rc=$?
row "tokenizer smaller than vocab_size" "$rc" "completion: '$(head -c 120 p11.out)'"

# 12. A latest file holding an absolute path.
"$BIN" train --quiet --out p12a "${SMALL[@]}" --set train.steps=2 >/dev/null 2>&1
"$BIN" train --quiet --out p12b "${SMALL[@]}" --set train.steps=2 >/dev/null 2>&1
printf '%s' "$WORK/p12a/ckpt-000002" > p12b/latest
"$BIN" train --quiet --resume p12b --set train.steps=4 >/dev/null 2>p12.err; rc=$?
row "latest holds an absolute path" "$rc" "$(err p12.err) // other run now has: $(ls -d p12a/ckpt-* | xargs -n1 basename | tr '\n' ' ')"

# 13. Data paths from another directory.
mkdir -p p13/work p13/elsewhere && cp corpus.txt p13/work/
(cd p13/work && "$BIN" train --quiet --out run "${SMALL[@]}" --set train.steps=2 --data corpus.txt >/dev/null 2>&1)
(cd p13/elsewhere && "$BIN" eval --checkpoint ../work/run >/dev/null 2>../../p13.err); rc=$?
row "eval from another directory" "$rc" "$(err p13.err)"

# 14-18. Sizes that cannot fit, overflows, oversized integers.
probe() { # NAME ARGS...
    local name=$1; shift
    ( ulimit -v 8000000; "$BIN" "$@" ) >/dev/null 2>pp.err; local rc=$?
    row "$name" "$rc" "$(err pp.err 2)"
}
probe "train.batch_size=1e9" train --quiet --out p14a --set train.batch_size=1000000000
probe "model.n_layer=1e9" train --quiet --out p14b --set model.n_layer=1000000000
probe "1B-parameter model, ulimit -v 8 GB" train --quiet --out p14c --set model.n_layer=24 --set model.d_model=2048 --set model.n_head=16 --set model.d_ff=8192 --set model.n_experts=4
probe "huge model.vocab_size" train --quiet --out p14d --set model.vocab_size=1152921504606846976
probe "batch_size x seq_len overflow" train --quiet --out p14e --set train.batch_size=4611686018427387904
probe "sweep --scale 1e30" sweep s3.toml --scale 1e30 --dry-run
"$BIN" train --quiet --out p18 "${SMALL[@]}" --set model.moe_every=0 --set train.steps=2 >/dev/null 2>&1
cp -r p18 p18b
edit_ckpt p18/ckpt-000002 'if c is not None: c["model"]["n_experts"] = 2**64 - 1'
probe "checkpoint config: model.n_experts > i64::MAX (eval)" eval --checkpoint p18
probe "checkpoint config: model.n_experts > i64::MAX (generate)" generate --checkpoint p18 --prompt "1 2" --max-new-tokens 4
edit_ckpt p18b/ckpt-000002 'if c is not None: c["train"]["steps"] = 2**64 - 1'
probe "checkpoint config: train.steps > i64::MAX (resume)" train --resume p18b

# 19. One-line errors.
printf '[model]\nn_layer = "four"\n' > bad.toml
"$BIN" train --config bad.toml >/dev/null 2>p19.err; rc=$?
row "TOML error" "$rc" "$(wc -l < p19.err) lines: $(head -c 200 p19.err)"
touch afile
"$BIN" train --quiet --out afile/run >/dev/null 2>p19b.err; rc=$?
row "I/O error (--out under a file)" "$rc" "$(err p19b.err)"
"$BIN" train --no-such-flag >/dev/null 2>&1; rc=$?
row "unknown flag" "$rc" "(clap usage error)"

# 20. Ctrl-C during eval.
"$BIN" eval --checkpoint p9 --batches 100000000 >/dev/null 2>p20.err &
pid=$!; sleep 2; kill -INT $pid; sleep 1
if kill -0 $pid 2>/dev/null; then state="still running 1 s after Ctrl-C"; kill -9 $pid; else state="stopped"; fi
wait $pid 2>/dev/null; rc=$?
row "Ctrl-C during eval" "$rc" "$state; $(grep -v '^device' p20.err | tr '\n' ' ')"
