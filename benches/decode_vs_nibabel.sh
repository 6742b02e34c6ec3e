#!/usr/bin/env bash
# dino3d NIfTI decode vs nibabel, same files, same machine, one core.
#
# Run from anywhere (no arguments):
#
#     benches/decode_vs_nibabel.sh
#
# What it does:
#   1. creates a Python venv with nibabel + numpy at $NB_VENV if missing;
#   2. writes $N_VOLS CT-like 256x256x128 int16 volumes (vol_XXX.nii.gz, nibabel
#      gzip level 1, and vol_XXX.nii) into $DINO3D_BENCH_DATA if missing, with
#      /work/shared/bench/monai/make_data.py;
#   3. builds, then runs `cargo bench -p dino3d-pipeline --bench decode`
#      (divan, DIVAN_THREADS=1) and benches/nibabel_decode.py one after the
#      other, both pinned to CPU $BENCH_CPU with taskset when available;
#   4. prints a side-by-side summary (dino3d vol/s, nibabel vol/s, ratio).
#
# Environment (all optional):
#   DINO3D_BENCH_DATA  data dir                 (default /tmp/dino3d-bench-data)
#   NB_VENV            venv with nibabel+numpy  (default /tmp/nbvenv)
#   N_VOLS             volumes to generate      (default 12)
#   NB_PASSES          nibabel passes           (default 5)
#   BENCH_CPU          CPU to pin to            (default 0)
#   MAKE_DATA          generator script         (default /work/shared/bench/monai/make_data.py)
#   OUT_DIR            where raw outputs go     (default target/decode-bench)
#
# Both sides report the median time per volume as vol/s (and the fastest
# volume, the figure least disturbed by other load on a shared machine);
# nibabel also prints bench_load.py's best-pass figure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export DINO3D_BENCH_DATA="${DINO3D_BENCH_DATA:-/tmp/dino3d-bench-data}"
NB_VENV="${NB_VENV:-/tmp/nbvenv}"
N_VOLS="${N_VOLS:-12}"
NB_PASSES="${NB_PASSES:-5}"
BENCH_CPU="${BENCH_CPU:-0}"
MAKE_DATA="${MAKE_DATA:-/work/shared/bench/monai/make_data.py}"
OUT_DIR="${OUT_DIR:-$ROOT/target/decode-bench}"
PY="$NB_VENV/bin/python"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# 1. venv
if ! "$PY" -c 'import nibabel, numpy' 2>/dev/null; then
    log "creating venv $NB_VENV (nibabel, numpy)"
    python3 -m venv "$NB_VENV"
    "$NB_VENV/bin/pip" install --quiet nibabel numpy
fi

# 2. data
have() { compgen -G "$DINO3D_BENCH_DATA/vol_*.$1" | wc -l || true; }
if [[ ! -d "$DINO3D_BENCH_DATA" ]] || (( $(have nii.gz) < N_VOLS || $(have nii) < N_VOLS )); then
    [[ -f "$MAKE_DATA" ]] || die "data generator $MAKE_DATA not found"
    log "generating $N_VOLS volumes into $DINO3D_BENCH_DATA"
    "$PY" "$MAKE_DATA" "$DINO3D_BENCH_DATA" "$N_VOLS"
fi

# 3. build (unpinned), then measure (pinned)
PIN=()
if command -v taskset >/dev/null 2>&1 && taskset -c "$BENCH_CPU" true 2>/dev/null; then
    PIN=(taskset -c "$BENCH_CPU")
    log "pinning to CPU $BENCH_CPU"
else
    log "taskset not available: running unpinned"
fi
mkdir -p "$OUT_DIR"
log "building the decode bench"
cargo bench -p dino3d-pipeline --bench decode --no-run

log "running dino3d (divan)"
DIVAN_THREADS=1 "${PIN[@]}" cargo bench -p dino3d-pipeline --bench decode -- --color never \
    | tee "$OUT_DIR/dino3d.txt"

log "running nibabel"
"${PIN[@]}" "$PY" "$ROOT/benches/nibabel_decode.py" "$DINO3D_BENCH_DATA" "$NB_PASSES" \
    "$OUT_DIR/nibabel.json" | tee "$OUT_DIR/nibabel.txt"

# 4. summary
"$PY" - "$OUT_DIR/dino3d.txt" "$OUT_DIR/nibabel.json" "$DINO3D_BENCH_DATA" <<'EOF'
import glob, json, os, re, sys

divan_txt, nb_json, data_dir = sys.argv[1:4]
SI = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}

def parse_divan(path):
    """{bench: {"item/s": {"fastest","median","mean"}, "B/s": {...}}} from divan's table."""
    out, cur = {}, None
    for line in open(path, encoding="utf-8"):
        body = re.sub(r"^[\s│├╰─]*", "", line.rstrip("\n"))
        cols = [c.strip() for c in body.split("│")]
        if len(cols) < 4:
            continue
        m = re.match(r"([A-Za-z_]\w*)\s+(.*)$", cols[0])
        if m:  # "name  fastest-time": a new benchmark
            cur = m.group(1)
            out.setdefault(cur, {})
            continue
        if cur is None:
            continue
        vals = []
        for c in cols[:4]:  # fastest, slowest, median, mean
            u = re.match(r"([\d.]+)\s*([KMGT]?)(item/s|B/s)$", c)
            if not u:
                break
            vals.append((float(u.group(1)) * SI[u.group(2)], u.group(3)))
        if len(vals) == 4:
            out[cur][vals[0][1]] = {"fastest": vals[0][0], "median": vals[2][0], "mean": vals[3][0]}
    return out

d = parse_divan(divan_txt)
nb = json.load(open(nb_json))
need = ["read_volume_nii_gz", "read_volume_nii", "read_header_nii_gz", "ceiling_inflate_only_nii_gz"]
missing = [b for b in need if "item/s" not in d.get(b, {})]
if missing:
    sys.exit(f"error: could not parse divan results for {missing} from {divan_txt}")
gz_files = sorted(glob.glob(os.path.join(data_dir, "vol_*.nii.gz")))
gz_mb = sum(map(os.path.getsize, gz_files)) / len(gz_files) / 1e6
ours = lambda b, s="median": d[b]["item/s"][s]

def row(name, a, b):
    print(f"  {name:44s} {a:10.2f} {b:10.2f} {a / b:7.2f}x")

print()
print("=== decode 256x256x128 int16 volumes, one core: vol/s (median per volume; both sides) ===")
print(f"  {'':44s} {'dino3d':>10s} {'nibabel':>10s} {'ratio':>8s}")
row(".nii.gz read_volume vs nibabel native int16", ours("read_volume_nii_gz"), nb["nii.gz native int16"]["median"])
row(".nii.gz read_volume vs nibabel + float32", ours("read_volume_nii_gz"), nb["nii.gz + float32"]["median"])
row(".nii    read_volume vs nibabel native int16", ours("read_volume_nii"), nb["nii native int16 (mmap=False)"]["median"])
row(".nii    read_volume vs nibabel + float32", ours("read_volume_nii"), nb["nii + float32 (mmap=False)"]["median"])
print("  fastest volume (least disturbed by other load):")
row(".nii.gz read_volume vs nibabel native int16", ours("read_volume_nii_gz", "fastest"), nb["nii.gz native int16"]["fastest"])
print(f"  nibabel .nii.gz native, best pass over all files (bench_load.py figure): "
      f"{nb['nii.gz native int16']['best_pass']:.2f} vol/s")
gz = ours("read_volume_nii_gz")
gz_bps = d["read_volume_nii_gz"].get("B/s", {}).get("median", 0)
ceil = ours("ceiling_inflate_only_nii_gz")
print(f"  .nii.gz read_volume: {gz_bps / 1e6:.0f} MB/s decoded voxels, {gz * gz_mb:.0f} MB/s of gzip "
      f"({gz_mb:.2f} MB/file); {100 * gz / ceil:.0f}% of libdeflate inflate-only ({ceil:.2f} vol/s)")
print(f"  .nii.gz read_header: {ours('read_header_nii_gz'):.0f} files/s")
ratio = gz / nb["nii.gz native int16"]["median"]
print(f"  target dino3d >= 3x nibabel on .nii.gz: {'MET' if ratio >= 3 else 'NOT MET'} ({ratio:.2f}x)")
EOF
