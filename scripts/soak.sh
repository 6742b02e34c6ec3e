#!/usr/bin/env bash
# Soak test, outside the suite: pretraining (recipes/demo.yaml, the bundled
# brains) runs for about DURATION seconds while another process
#   * damages cache entries (16 random bytes flipped in a random entry, every
#     DAMAGE_EVERY seconds, from 10% of the run on),
#   * fills the run's disk at 30%, for 60 s or until 60% of the run (its
#     folder is a tmpfs of FS_SIZE, so only this run sees the full disk),
#   * deletes one source volume (at 80%).
# An undisturbed run of the same recipe and iterations is the reference. Passes
# when the disturbed run exits 0, ran every iteration, and its losses equal the
# reference's byte for byte up to the iteration where the deleted volume was
# first missed (after that, batches may differ by the skipped item, which the
# run must report). Needs root for the tmpfs mount.
#
#   scripts/soak.sh                      # DURATION=1800 (30 minutes per run)
#   DURATION=240 scripts/soak.sh         # a short soak
# BIN=path/to/dino-run skips the release build; WORK (/tmp/dino3d-soak).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DURATION="${DURATION:-1800}"
DAMAGE_EVERY="${DAMAGE_EVERY:-15}"
FS_SIZE="${FS_SIZE:-1G}"
WORK="${WORK:-/tmp/dino3d-soak}"
if [ -z "${BIN:-}" ]; then
  cargo build --release -q --bin dino-run
  BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/dino-run"
fi
FS="$WORK/fs"
mkdir -p "$FS" "$WORK/ref"
mountpoint -q "$FS" && umount "$FS"
mount -t tmpfs -o "size=$FS_SIZE" tmpfs "$FS"
trap 'umount "$FS" 2>/dev/null || true' EXIT
rm -rf "$WORK/ref"/* "$WORK/calib"

# Each run reads its own copy of the volumes (one of them gets deleted).
volumes() { # dir
  mkdir -p "$1"
  cp data/volumes/colin27_mricron/ch2.nii.gz data/volumes/colin27_mricron/ch2bet.nii.gz \
    data/volumes/mni152_2009a_nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz "$1/"
  python3 -c 'import json,os,sys; d=sys.argv[1]; json.dump([{"image": os.path.join(d, f)} for f in sorted(os.listdir(d)) if f.endswith(".nii.gz")], open(os.path.join(d, "m.json"), "w"))' "$1"
}
run() { # dir iterations log
  local epochs=$(( ($2 + 29) / 30 ))
  "$BIN" recipes/demo.yaml --set "data.manifest=$1/data/m.json" --set "cache.dir=$1/cache" \
    --set "train.output_dir=$1/run" --set "optim.epochs=$epochs" \
    --set "train.max_iterations=$2" >"$3" 2>&1
}
lines() { [ -f "$1" ] && wc -l <"$1" || echo 0; }

# Calibrate: iterations per second after the cache is filled.
volumes "$WORK/calib/data"
run "$WORK/calib" 5 "$WORK/calib.log"
rm -rf "$WORK/calib/run"
start=$(date +%s.%N)
run "$WORK/calib" 30 "$WORK/calib.log"
rate=$(python3 -c "import time; print(30 / (time.time() - $start))")
ITERS=$(python3 -c "print(max(40, int($DURATION * $rate)))")
echo "soak: $ITERS iterations per run (calibrated $rate it/s), $(date -u +%FT%TZ), $(git rev-parse --short HEAD)"

volumes "$WORK/ref/data"
t0=$(date +%s)
run "$WORK/ref" "$ITERS" "$WORK/ref.log"
echo "reference run: $(( $(date +%s) - t0 )) s"

volumes "$FS/data"
t0=$(date +%s)
run "$FS" "$ITERS" "$WORK/soak.log" &
pid=$!
events="$WORK/events.txt"
: >"$events"
metrics="$FS/run/metrics.jsonl"
damaged=0 filled=0 filled_at=0 deleted=0 last_damage=0
while kill -0 "$pid" 2>/dev/null; do
  done_iters=$(lines "$metrics")
  pct=$(( 100 * done_iters / ITERS ))
  now=$(date +%s)
  if [ "$pct" -ge 10 ] && [ $(( now - last_damage )) -ge "$DAMAGE_EVERY" ]; then
    entry=$(find "$FS/cache" -type f -size +8k 2>/dev/null | shuf -n 1 || true)
    if [ -n "$entry" ]; then
      python3 - "$entry" <<'EOF'
import os, random, sys
p = sys.argv[1]
n = os.path.getsize(p)
with open(p, "r+b") as f:
    for _ in range(16):
        at = random.randrange(min(4096, n - 1), n)
        f.seek(at); b = f.read(1); f.seek(at); f.write(bytes([b[0] ^ 0xFF]))
EOF
      damaged=$((damaged + 1)); last_damage=$now
      echo "iteration $done_iters: damaged $(basename "$entry")" >>"$events"
    fi
  fi
  if [ "$pct" -ge 30 ] && [ "$filled" = 0 ]; then
    filled=1
    echo "iteration $done_iters: disk filled ($(df -h --output=avail "$FS" | tail -1 | tr -d " ") free before)" >>"$events"
    dd if=/dev/zero of="$FS/fill" bs=1M status=none 2>/dev/null || true
    filled_at=$now
  fi
  # Full for 60 s, or until 60% of the run: the run's last writes must succeed.
  if [ "$filled" = 1 ] && { [ $(( now - filled_at )) -ge 60 ] || [ "$pct" -ge 60 ]; }; then
    filled=2
    rm -f "$FS/fill"
    echo "iteration $done_iters: disk freed after $(( now - filled_at )) s" >>"$events"
  fi
  if [ "$pct" -ge 80 ] && [ "$deleted" = 0 ]; then
    deleted=1
    rm -f "$FS/data/ch2.nii.gz"
    echo "iteration $done_iters: deleted ch2.nii.gz" >>"$events"
  fi
  sleep 1
done
status=0
wait "$pid" || status=$?
echo "disturbed run: $(( $(date +%s) - t0 )) s, exit $status, $damaged entries damaged"
cat "$events"
cp "$metrics" "$WORK/soak-metrics.jsonl" 2>/dev/null || true
python3 - "$WORK/ref/run/metrics.jsonl" "$WORK/soak-metrics.jsonl" "$ITERS" "$status" <<'EOF'
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
soak = [json.loads(l) for l in open(sys.argv[2])]
iters, status = int(sys.argv[3]), int(sys.argv[4])
ok = status == 0 and len(soak) == iters == len(ref)
first_skip = next((r["iteration"] for r in soak if r.get("skipped", 0) > 0), None)
same_until = first_skip if first_skip is not None else iters
mismatch = [(a["iteration"], a["loss"], b["loss"]) for a, b in zip(ref, soak)
            if a["iteration"] < same_until and a["loss"] != b["loss"]]
after = sum(a["loss"] != b["loss"] for a, b in zip(ref, soak) if a["iteration"] >= same_until)
print(f"iterations: reference {len(ref)}, disturbed {len(soak)} of {iters}")
print(f"first iteration with a skipped item: {first_skip}; skipped items in all: {sum(r.get('skipped', 0) for r in soak)}")
print(f"losses before it: {same_until - len(mismatch)} equal, {len(mismatch)} different {mismatch[:3]}")
print(f"losses from it on: {after} of {max(0, len(soak) - same_until)} different (expected: the skipped item changes batches)")
ok = ok and not mismatch
print("SOAK PASSED" if ok else "SOAK FAILED")
sys.exit(0 if ok else 1)
EOF
