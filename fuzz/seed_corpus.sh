#!/usr/bin/env bash
# Recreates fuzz/corpus/nifti_read/ (gitignored) from the test data in data/nifti/:
# every file as is, plus gzip-compressed and truncated variants of a few .nii files.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="$here/../data/nifti"
out="$here/corpus/nifti_read"
mkdir -p "$out"

# All the reference files (flattened: <source>_<name>).
for f in "$data"/*/*; do
    [ -f "$f" ] || continue
    src="$(basename "$(dirname "$f")")"
    cp "$f" "$out/${src}_$(basename "$f")"
done

# gzip-compressed and truncated variants of a couple of small .nii files.
for f in nibabel/resampled_anat_moved.nii nibabel/row_major.dconn.nii nibabel/functional.nii nifti-js/minimal.nii; do
    name="$(basename "$f" .nii)"
    gzip -9 -n -c "$data/$f" > "$out/gz_${name}.nii.gz"
    for len in 348 352 400 1000; do
        head -c "$len" "$data/$f" > "$out/trunc${len}_${name}.nii"
    done
    # Truncated gzip stream (valid header, voxels cut short).
    gzip -9 -n -c "$data/$f" | head -c 200 > "$out/gztrunc_${name}.nii.gz"
done
# Truncated headers of the NIfTI-2 and Analyze header files.
head -c 540 "$data/nibabel/nifti2.hdr" > "$out/trunc540_nifti2.hdr"
head -c 300 "$data/nibabel/nifti2.hdr" > "$out/trunc300_nifti2.hdr"
head -c 200 "$data/nibabel/analyze.hdr" > "$out/trunc200_analyze.hdr"
# A multi-member gzip (as bgzip / pigz --independent write).
f="$data/nibabel/resampled_anat_moved.nii"
{ head -c 1000 "$f" | gzip -n -c; tail -c +1001 "$f" | gzip -n -c; } > "$out/gzmulti_resampled_anat_moved.nii.gz"

echo "$(ls "$out" | wc -l) files in $out"

# other_formats_read: the attached MetaImage/NRRD fixtures (header and voxels in
# one file), as is and truncated.
mf="$here/../data/other_formats/generated"
out2="$here/corpus/other_formats_read"
mkdir -p "$out2"
for f in "$mf"/*.mha "$mf"/*.nrrd "$mf"/types/*.mha; do
    cp "$f" "$out2/$(basename "$f")"
    head -c 300 "$f" > "$out2/trunc300_$(basename "$f")"
done
# ... and the single-file DICOM samples (native, big-endian, implicit, RLE,
# deflate, JPEG lossless, JPEG 2000 lossless, enhanced multi-frame).
for f in "$here"/../data/other_formats/dicom/*.dcm "$here"/../data/other_formats/dicom_generated/*.dcm; do
    cp "$f" "$out2/dicom_$(basename "$f")"
    head -c 300 "$f" > "$out2/trunc300_dicom_$(basename "$f")"
done

# recipe_compile: every bundled recipe, as is and with overrides after a
# `---set---` line (the target's input format).
out3="$here/corpus/recipe_compile"
mkdir -p "$out3"
for f in "$here"/../recipes/*.yaml; do
    cp "$f" "$out3/$(basename "$f")"
    { cat "$f"; printf '\n---set---\nseed=7\nbatch.size=2\ncache.codec=lz4\n'; } > "$out3/set_$(basename "$f")"
done

# pth_read: mode byte 0 + a whole .pth fixture; mode byte 1 + its pickle.
out4="$here/corpus/pth_read"
mkdir -p "$out4"
for f in "$here"/../model/tests/fixtures/*.pth; do
    name=$(basename "$f" .pth)
    { printf '\000'; cat "$f"; } > "$out4/file_$name"
    pkl=$(unzip -Z1 "$f" | grep 'data.pkl$' | head -1)
    { printf '\001'; unzip -p "$f" "$pkl"; } > "$out4/pickle_$name"
done
echo "$(ls "$out3" | wc -l) recipes, $(ls "$out4" | wc -l) pth seeds"
