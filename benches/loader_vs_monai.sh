#!/usr/bin/env bash
# Issue 23: the whole loader, `dino-run pipeline run recipes/pretrain.yaml`,
# measured as a user runs it (one process, its cache, collation into batches)
#   1. against the transforms alone on one core: the `sample` bench
#      (`one_thread`: 2 global 96³ + 8 local 48³ views cut from an in-memory
#      prepared volume), interleaved with `pipeline run --threads 1` from a
#      warm cache, both pinned to CPU $BENCH_CPU; then 2 threads on 2 CPUs;
#   2. against MONAI's peer of the same chain (../shared/bench/monai/
#      pipeline_peer.py: 3DINO's CacheNTransDataset + a DataLoader with 2
#      workers), cold and warm cache, as samples per CPU-second (user + system
#      time of the whole process tree, /usr/bin/time), with peak memory;
# on the 256x256x128 CT-like volumes of benches/decode_vs_nibabel.sh and on
# 512x512x256 ones (make_data.py), the sizes of $SIZES.
#
#   benches/loader_vs_monai.sh
#
# Env (all optional): BIN (dino-run; default: a release build), SAMPLE_BENCH
# (the built `sample` bench; default: built with cargo), VENV (torch + MONAI,
# default /tmp/mvenv), ROUNDS (3), BATCH (32), BATCHES (8), SIZES
# ("256 512"), BENCH_CPU (0), WORK (/tmp/dino3d-loader-bench), MONAI (1: run
# MONAI's peer, 0: skip it), ORDERS (the batch orders dino-run runs in against
# MONAI, "z" by default; "z x" adds the x-fastest batches pretraining on a
# GPU takes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS="${ROUNDS:-3}"
BATCH="${BATCH:-32}"
BATCHES="${BATCHES:-8}"
SIZES="${SIZES:-256 512}"
BENCH_CPU="${BENCH_CPU:-0}"
WORK="${WORK:-/tmp/dino3d-loader-bench}"
VENV="${VENV:-/tmp/mvenv}"
MONAI="${MONAI:-1}"
ORDERS="${ORDERS:-z}"
PEER="$ROOT/../shared/bench/monai/pipeline_peer.py"
SMALL="${DINO3D_BENCH_DATA:-/tmp/dino3d-bench-data}"
LARGE="${DINO3D_LARGE_DATA:-/tmp/dino3d-large}"
[ -f "$SMALL/vol_000.nii.gz" ] || bash benches/decode_vs_nibabel.sh
if [ -z "${BIN:-}" ]; then
  cargo build --release -q --bin dino-run
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/dino-run"
fi
if [ -z "${SAMPLE_BENCH:-}" ]; then
  SAMPLE_BENCH=$(cargo bench -q -p dino3d-pipeline --bench sample --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
fi
mkdir -p "$WORK"
TIME_LOG="$WORK/time.txt"

manifest() { # dir -> manifest path of its .nii.gz volumes
  python3 -c 'import json,os,sys; d=sys.argv[1]; m=os.path.join(sys.argv[2], os.path.basename(d)+".json"); json.dump([{"image": os.path.join(d, f)} for f in sorted(os.listdir(d)) if f.endswith(".nii.gz")], open(m, "w")); print(m)' "$1" "$WORK"
}

# dino-run pipeline run; prints "rate cpu_s rss_mib" (samples/s, CPU seconds, peak MiB).
run_dino() { # cpus threads manifest cache [batch order]
  local out
  out=$(/usr/bin/time -f "%U %S %M" -o "$TIME_LOG" taskset -c "$1" "$BIN" pipeline run recipes/pretrain.yaml \
    --set "data.manifest=$3" --set "cache.dir=$4" --set "batch.size=$BATCH" \
    --threads "$2" --batches "$BATCHES" --batch-order "${5:-z}" 2>/dev/null | grep "samples/s")
  local rate
  rate=$(echo "$out" | sed -E 's/.*: ([0-9.]+) samples\/s.*/\1/')
  read -r user sys rss <"$TIME_LOG"
  echo "$rate $(python3 -c "print(round($user + $sys, 2))") $((rss / 1024))"
}

# The sample bench, one_thread or two_threads: fastest and median samples/s.
run_bench() { # cpus name
  DINO3D_BENCH_DATA="$SMALL" taskset -c "$1" "$SAMPLE_BENCH" --bench "$2" 2>/dev/null |
    python3 -c '
import re, sys
text = sys.stdin.read()
unit = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
row = [l for l in text.splitlines() if re.search(r"(one|two)_threads?\s", l)][0]
times = [float(v) * unit[u] for v, u in re.findall(r"([0-9.]+) (ns|µs|us|ms|s)\b", row)]
fastest, median = times[0], times[2]
# Two samples per iteration.
print(f"{2 / fastest:.2f} {2 / median:.2f}")'
}

echo "== dino-run pipeline run vs the sample bench, $ROUNDS rounds ($(git rev-parse --short HEAD), batch $BATCH x $BATCHES batches)"
small_manifest=$(manifest "$SMALL")
cache="$WORK/cache-256"
rm -rf "$cache"
run_dino "$BENCH_CPU" 1 "$small_manifest" "$cache" >/dev/null # warm the cache
for r in $(seq "$ROUNDS"); do
  read -r fast median < <(run_bench "$BENCH_CPU" one_thread)
  for order in $ORDERS; do
    read -r rate cpu rss < <(run_dino "$BENCH_CPU" 1 "$small_manifest" "$cache" "$order")
    echo "round $r, 1 thread, batch order $order:  pipeline run $rate samples/s ($cpu CPU-s, $rss MiB) | sample bench one_thread $median median, $fast fastest | ratio $(python3 -c "print(f'{$rate / $median:.1%} of the median, {$rate / $fast:.1%} of the fastest')")"
  done
done
if [ "$(nproc)" -ge 2 ]; then
  for r in $(seq "$ROUNDS"); do
    read -r rate cpu rss < <(run_dino "0,1" 2 "$small_manifest" "$cache")
    read -r fast median < <(run_bench "0,1" two_threads)
    echo "round $r, 2 threads: pipeline run $rate samples/s ($cpu CPU-s, $rss MiB) | sample bench two_threads $median median, $fast fastest"
  done
fi

[ "$MONAI" = 1 ] || exit 0
"$VENV/bin/python" -c 'import monai, torch' || { echo "no torch + MONAI in $VENV"; exit 1; }
for size in $SIZES; do
  if [ "$size" = 256 ]; then data="$SMALL"; else
    data="$LARGE"
    [ -f "$data/vol_000.nii.gz" ] || "$VENV/bin/python" ../shared/bench/monai/make_data.py "$data" 4 512x512x256
  fi
  m=$(manifest "$data")
  echo "== ${size}: dino-run (2 threads) vs MONAI's peer (2 workers), cold then warm cache, batch $BATCH x $BATCHES"
  cache="$WORK/cache-dino-$size"
  for order in $ORDERS; do
    for state in cold warm; do
      [ "$state" = cold ] && rm -rf "$cache" && sync && { echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
      read -r rate cpu rss < <(run_dino "0,1" 2 "$m" "$cache" "$order")
      per_cpu=$(python3 -c "print(round($BATCH * $BATCHES / $cpu, 2))")
      echo "dino-run $state, batch order $order: $rate samples/s, $per_cpu samples per CPU-s, peak $rss MiB"
    done
  done
  mcache="$WORK/cache-monai-$size"
  for state in cold warm; do
    [ "$state" = cold ] && rm -rf "$mcache" && sync && { echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
    out=$(/usr/bin/time -f "%U %S %M" -o "$TIME_LOG" taskset -c 0,1 "$VENV/bin/python" "$PEER" "$m" "$mcache" "$BATCHES" "$BATCH" 2 2>/dev/null | grep "samples/s")
    read -r user sys rss <"$TIME_LOG"
    rate=$(echo "$out" | sed -E 's/.*: ([0-9.]+) samples\/s.*/\1/')
    per_cpu=$(python3 -c "print(round($BATCH * $BATCHES / ($user + $sys), 2))")
    echo "MONAI   $state: $rate samples/s, $per_cpu samples per CPU-s, peak $((rss / 1024)) MiB (largest process)"
  done
done
