//! The store of chunked arrays end to end: exact round trips (integers +
//! decode map bit-identical to the map applied to floats), box and plane
//! reads, random-read mappings, damage detection, and entries under a
//! foreign key. (The pipeline's use of it, keys from source files and
//! prefixes, views cut plane by plane, concurrent warmers and unwritable
//! folders, is tested in `pipeline/tests/cache_source.rs`.)

use dino3d_cache::{
    Affine, Array, ArrayToWrite, CacheDir, Codec, DecodeMap, Entry, Layout, Lookup, PlaneNeed,
    PlaneRect, StoredType, write_entry,
};

const IDENTITY: Affine = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

fn wavy(shape: [usize; 4], integral: bool) -> Array {
    let n: usize = shape.iter().product();
    Array {
        data: (0..n)
            .map(|i| {
                let v = ((i * 7919) % 2003) as f32 - 1000.0;
                if integral { v } else { v / 7.3 }
            })
            .collect(),
        shape,
        spacing: [0.8, 0.9, 2.5],
        affine: IDENTITY,
    }
}

fn crop(img: &Array, start: [usize; 3], extent: [usize; 3]) -> Array {
    let mut data = Vec::new();
    for c in 0..img.shape[0] {
        for k in start[2]..start[2] + extent[2] {
            for j in start[1]..start[1] + extent[1] {
                let at = img.index(c, start[0], j, k);
                data.extend_from_slice(&img.data[at..at + extent[0]]);
            }
        }
    }
    let mut affine = img.affine;
    for row in affine.iter_mut().take(3) {
        row[3] += (0..3).map(|a| row[a] * start[a] as f64).sum::<f64>();
    }
    Array {
        data,
        shape: [img.shape[0], extent[0], extent[1], extent[2]],
        spacing: img.spacing,
        affine,
    }
}

fn to_write<'a>(
    key: &'a str,
    a: &'a Array,
    dtype: StoredType,
    decode: Option<DecodeMap>,
) -> ArrayToWrite<'a> {
    ArrayToWrite {
        key,
        data: &a.data,
        shape: a.shape,
        spacing: a.spacing,
        affine: a.affine,
        dtype,
        decode,
    }
}

#[test]
fn entries_round_trip_exactly_and_boxes_decode_only_what_they_need() {
    for codec in [Codec::Zstd, Codec::Lz4] {
        round_trip(codec);
    }
}

fn round_trip(codec: Codec) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.d3c");
    let float = wavy([2, 37, 29, 19], false);
    // High bytes of 8 values (LZ4 entries pack them), low bytes noisy.
    let ints = wavy([1, 40, 33, 21], true);
    // Five values in runs: low bytes packed too.
    let mut few = wavy([1, 40, 33, 21], true);
    let levels = [-1024.0, -1000.0, 0.0, 40.0, 1000.0];
    few.data
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = levels[(i / 7 + i / 301) % 5]);
    // A window like ScaleIntensityRange(-700, 600, -1, 1, clip).
    let map = DecodeMap::new(2.0 / 1300.0, 700.0 / 1300.0 * 2.0 - 1.0, -1.0, 1.0);
    write_entry(
        &path,
        &[
            to_write("image", &float, StoredType::F32, None),
            to_write("ct", &ints, StoredType::I16, Some(map)),
            to_write("few", &few, StoredType::I16, Some(map)),
        ],
        Layout {
            chunk: [16, 16, 8],
            codec,
        },
        "src.nii.gz",
        "k",
    )
    .unwrap();
    let e = Entry::open(&path).unwrap();
    e.verify().unwrap();
    assert_eq!(e.read_all(0).unwrap(), float);
    let mut scaled = ints.clone();
    scaled.data.iter_mut().for_each(|v| *v = map.apply(*v));
    let all = e.read_all(1).unwrap();
    assert_eq!(
        all, scaled,
        "integers + decode map == the map applied to floats, bit for bit"
    );
    let mut few_scaled = few.clone();
    few_scaled.data.iter_mut().for_each(|v| *v = map.apply(*v));
    assert_eq!(e.read_all(2).unwrap(), few_scaled);
    for (start, extent) in [
        ([0, 0, 0], [1, 1, 1]),
        ([3, 5, 7], [20, 17, 9]),
        ([15, 15, 7], [2, 2, 2]),
        ([0, 0, 0], [40, 33, 21]),
    ] {
        assert_eq!(
            e.read_box(1, start, extent).unwrap(),
            crop(&scaled, start, extent),
            "{start:?} {extent:?}"
        );
    }
    assert_eq!(
        e.read_box(0, [30, 20, 10], [7, 9, 9]).unwrap(),
        crop(&float, [30, 20, 10], [7, 9, 9])
    );
    assert!(
        e.read_box(0, [30, 20, 10], [8, 9, 9]).is_err(),
        "a box leaving the array"
    );
    // Plane by plane: the planes of the whole read, in order, bit for bit
    // (float and windowed integers, two channels, edge chunks), only the
    // planes asked for, and inside each the rectangle asked for (whole
    // planes, one voxel, rectangles across chunk edges, one running past
    // the plane's edge).
    for (array, whole) in [(0, &float), (1, &scaled), (2, &few_scaled)] {
        let [c, nx, ny, nz] = whole.shape;
        let rect = |z: usize| match z % 4 {
            1 => None,
            0 => Some(PlaneRect::whole([nx, ny])),
            2 => Some(PlaneRect {
                start: [z % 7, 3 + z % 5],
                end: [z % 7 + 19, 3 + z % 5 + 17],
            }),
            _ if z % 8 == 3 => Some(PlaneRect {
                start: [16, 15],
                end: [17, 16],
            }),
            _ => Some(PlaneRect {
                start: [20, 20],
                end: [nx + 9, ny + 4],
            }),
        };
        let mut seen = Vec::new();
        e.for_each_plane(array, rect, |ch, z, plane| {
            let r = rect(z).unwrap().clamped([nx, ny]);
            for y in r.start[1]..r.end[1] {
                let at = y * nx;
                assert_eq!(
                    plane[at + r.start[0]..at + r.end[0]],
                    whole.data[(ch * nz + z) * nx * ny + at..][r.start[0]..r.end[0]],
                    "array {array} channel {ch} plane {z} row {y}"
                );
            }
            seen.push((ch, z));
        })
        .unwrap();
        let want: Vec<(usize, usize)> = (0..c)
            .flat_map(|ch| (0..nz).filter(|z| z % 4 != 1).map(move |z| (ch, z)))
            .collect();
        assert_eq!(seen, want, "array {array}: planes in order, as asked");
    }
    // Only some rows needed (a resize's taps): those rows as the whole read
    // gives them, bit for bit; rows no plane needs are never computed (the
    // plane starts zeroed, and their true values are not all zero).
    for (array, whole) in [(0, &float), (1, &scaled), (2, &few_scaled)] {
        let [_, nx, ny, nz] = whole.shape;
        // The fourth mask leaves the second chunk row (y 16..32) out whole.
        let masks: Vec<Vec<bool>> = (0..4)
            .map(|m| {
                (0..ny)
                    .map(|y| y != 4 && (y + m) % 3 != 0 && (m != 3 || !(16..32).contains(&y)))
                    .collect()
            })
            .collect();
        let rect = PlaneRect {
            start: [3, 2],
            end: [nx, ny - 1],
        };
        let need = |z: usize| {
            (z % 5 != 2).then(|| PlaneNeed {
                rect,
                rows: Some(masks[z % 4].as_slice()),
            })
        };
        let value =
            |ch: usize, z: usize, y: usize, x: usize| whole.data[((ch * nz + z) * ny + y) * nx + x];
        assert!(
            (rect.start[0]..rect.end[0]).any(|x| value(0, 0, 4, x) != 0.0),
            "row 4 holds values a read would give"
        );
        let mut planes = 0;
        e.for_each_plane(array, need, |ch, z, plane| {
            let mask = &masks[z % 4];
            for y in rect.start[1]..rect.end[1] {
                let row = &plane[y * nx..][rect.start[0]..rect.end[0]];
                if mask[y] {
                    let want: Vec<f32> = (rect.start[0]..rect.end[0])
                        .map(|x| value(ch, z, y, x))
                        .collect();
                    assert_eq!(row, want.as_slice(), "array {array} plane {z} row {y}");
                } else if y == 4 {
                    assert!(
                        row.iter().all(|&v| v == 0.0),
                        "array {array} plane {z}: row 4 computed"
                    );
                }
            }
            planes += 1;
        })
        .unwrap();
        assert_eq!(
            planes,
            whole.shape[0] * (0..nz).filter(|z| z % 5 != 2).count()
        );
    }
}

/// An open entry is mapped for random reads (`MADV_RANDOM`, "rr" in the
/// mapping's flags), so a cold read fetches the chunks it touches rather than
/// whole entries by the device's readahead window.
#[cfg(target_os = "linux")]
#[test]
fn entries_are_mapped_for_random_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random.d3c");
    let img = wavy([1, 20, 20, 20], true);
    write_entry(
        &path,
        &[to_write("image", &img, StoredType::I16, None)],
        Layout {
            chunk: [8, 8, 8],
            codec: Codec::Lz4,
        },
        "src.nii.gz",
        "k",
    )
    .unwrap();
    let entry = Entry::open(&path).unwrap();
    assert_eq!(entry.read_all(0).unwrap(), img);
    // /proc/self/smaps: a header line per mapping (ending in its file's
    // path), then its fields, the last being `VmFlags: rd mr ...`.
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_string_lossy();
    let mut in_entry = false;
    let mut flags = None;
    for line in smaps.lines() {
        if let Some(f) = line.strip_prefix("VmFlags:") {
            if in_entry {
                flags = Some(f.to_string());
            }
        } else if !line.contains(':') || line.split_whitespace().count() >= 5 {
            // A mapping's header (fields are `Name: value`; headers start
            // with an address range and have five or six columns).
            if line
                .split_whitespace()
                .next()
                .is_some_and(|r| r.contains('-'))
            {
                in_entry = line.ends_with(&*name);
            }
        }
    }
    let flags = flags.unwrap_or_else(|| panic!("no mapping of {name} in /proc/self/smaps"));
    assert!(
        flags.split_whitespace().any(|f| f == "rr"),
        "VmFlags of the entry's mapping: {flags}"
    );
    drop(entry);
}

#[test]
fn damage_is_detected_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheDir::new(dir.path()).unwrap();
    let img = wavy([1, 20, 20, 20], true);
    let stored = [to_write(
        "image",
        &img,
        StoredType::smallest_exact(&img.data),
        None,
    )];
    let written = store.store("ab12", "src", &stored).unwrap();
    assert!(written > 0);
    let path = store.entry_path("ab12");
    let fresh = Entry::open(&path).unwrap();
    assert_eq!(fresh.header.arrays[0].codec, dino3d_cache::DEFAULT_CODEC);
    assert_eq!(fresh.header.arrays[0].chunk, dino3d_cache::DEFAULT_CHUNK);
    drop(fresh);
    let good = std::fs::read(&path).unwrap();
    // A flipped payload byte: the framing is fine, the chunk checksum is not.
    let mut bad = good.clone();
    let at = good.len() - 40;
    bad[at] ^= 0x5a;
    std::fs::write(&path, &bad).unwrap();
    let Lookup::Hit(e) = store.lookup("ab12") else {
        panic!("framing intact")
    };
    let err = e.verify().unwrap_err().to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("ab12.d3c"),
        "{err}"
    );
    // Truncated (a torn write that somehow got renamed): removed on lookup.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(matches!(store.lookup("ab12"), Lookup::Removed(_)));
    assert!(!path.exists());
    // A temporary file of an interrupted write is never an entry.
    std::fs::write(
        path.parent().unwrap().join(".ab12.d3c.tmp.999999"),
        &good[..100],
    )
    .unwrap();
    assert!(matches!(store.lookup("ab12"), Lookup::Miss));
    assert_eq!(store.leftovers().len(), 1);
}

/// The chunk shape is each entry's own (in its header): entries written
/// with 32³ chunks, the default before 64 × 64 × 8, stay hits and read the
/// same values, by box and plane by plane through the window (which
/// prefetches for 32³ chunks only); only new entries take the folder's shape.
#[test]
fn entries_of_another_chunk_shape_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let img = wavy([1, 70, 90, 20], true);
    let map = DecodeMap::new(2.0 / 1300.0, 700.0 / 1300.0 * 2.0 - 1.0, -1.0, 1.0);
    let mut scaled = img.clone();
    scaled.data.iter_mut().for_each(|v| *v = map.apply(*v));
    let stored = [to_write("image", &img, StoredType::I16, Some(map))];
    let old = CacheDir::new(dir.path()).unwrap().with_chunk([32; 3]);
    old.store("old1", "src", &stored).unwrap();
    let store = CacheDir::new(dir.path()).unwrap();
    store.store("new1", "src", &stored).unwrap();
    let [_, nx, ny, nz] = img.shape;
    for (key, chunk) in [("old1", [32; 3]), ("new1", dino3d_cache::DEFAULT_CHUNK)] {
        let Lookup::Hit(e) = store.lookup(key) else {
            panic!("{key}: a hit")
        };
        assert_eq!(e.header.arrays[0].chunk, chunk, "{key}");
        assert_eq!(e.read_all(0).unwrap(), scaled, "{key}");
        assert_eq!(
            e.read_box(0, [30, 5, 3], [40, 30, 9]).unwrap(),
            crop(&scaled, [30, 5, 3], [40, 30, 9]),
            "{key}"
        );
        let mut planes = 0;
        e.for_each_plane(
            0,
            |_| Some(PlaneRect::whole([nx, ny])),
            |_, z, plane| {
                assert_eq!(
                    plane,
                    &scaled.data[z * nx * ny..][..nx * ny],
                    "{key} plane {z}"
                );
                planes += 1;
            },
        )
        .unwrap();
        assert_eq!(planes, nz, "{key}");
    }
}

/// An entry copied or renamed under another key is damage: the lookup of
/// that key removes it instead of serving another item's arrays, and
/// `verify` names the key it holds.
#[test]
fn an_entry_under_a_foreign_key_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheDir::new(dir.path()).unwrap();
    let a = wavy([1, 12, 12, 12], true);
    let b = wavy([1, 12, 12, 13], true);
    store
        .store(
            "aa01",
            "a.nii.gz",
            &[to_write("image", &a, StoredType::I16, None)],
        )
        .unwrap();
    store
        .store(
            "bb02",
            "b.nii.gz",
            &[to_write("image", &b, StoredType::I16, None)],
        )
        .unwrap();
    let (pa, pb) = (store.entry_path("aa01"), store.entry_path("bb02"));
    // `cp a b`: the file of key bb02 now holds aa01's entry.
    std::fs::copy(&pa, &pb).unwrap();
    let err = store.verify(&pb).err().expect("refused").to_string();
    assert!(
        err.contains("aa01") && err.contains("bb02") && err.contains("a.nii.gz"),
        "{err}"
    );
    assert!(store.verify(&pa).is_ok());
    match store.lookup("bb02") {
        Lookup::Removed(e) => assert!(e.to_string().contains("copied or renamed"), "{e}"),
        Lookup::Hit(_) => panic!("another item's entry was served"),
        Lookup::Miss => panic!("the foreign entry was not noticed"),
    }
    assert!(!pb.exists(), "removed, so it is rebuilt");
    let Lookup::Hit(e) = store.lookup("aa01") else {
        panic!("the original is intact")
    };
    assert_eq!(e.read_all(0).unwrap(), a);
}

/// Entries of the first format (an intensity window where the decode map is
/// now) are refused with a message saying so, never decoded without their
/// window.
#[test]
fn entries_of_the_earlier_format_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheDir::new(dir.path()).unwrap();
    let a = wavy([1, 8, 8, 8], true);
    store
        .store(
            "cc03",
            "c.nii.gz",
            &[to_write("image", &a, StoredType::I16, None)],
        )
        .unwrap();
    let path = store.entry_path("cc03");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(b"D3CACHE1");
    std::fs::write(&path, &bytes).unwrap();
    let err = Entry::open(&path).err().expect("refused").to_string();
    assert!(err.contains("earlier dino3d"), "{err}");
    assert!(matches!(store.lookup("cc03"), Lookup::Removed(_)));
}

/// Non-finite geometry (JSON has no NaN) is refused at write, never stored
/// as an entry that could not be read back.
#[test]
fn non_finite_geometry_is_refused_at_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheDir::new(dir.path()).unwrap();
    let mut a = wavy([1, 8, 8, 8], true);
    a.spacing[1] = f64::NAN;
    let err = store
        .store(
            "dd04",
            "d.nii.gz",
            &[to_write("image", &a, StoredType::I16, None)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite"), "{err}");
    assert!(store.entries().is_empty());
    let b = wavy([1, 8, 8, 8], true);
    let bad_map = DecodeMap::new(f64::INFINITY, 0.0, f64::NEG_INFINITY, f64::INFINITY);
    assert!(
        store
            .store(
                "dd05",
                "d.nii.gz",
                &[to_write("image", &b, StoredType::I16, Some(bad_map))]
            )
            .is_err()
    );
}

/// Defect 7 of the reliability issue: an entry truncated by another process
/// while it is mapped gives an error for that read, not a SIGBUS that kills
/// the run.
#[test]
fn an_entry_truncated_while_open_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheDir::new(dir.path()).unwrap();
    let a = wavy([1, 40, 40, 40], true);
    store
        .store(
            "ee06",
            "e.nii.gz",
            &[to_write("image", &a, StoredType::I16, None)],
        )
        .unwrap();
    let Lookup::Hit(entry) = store.lookup("ee06") else {
        panic!("written")
    };
    assert_eq!(entry.read_all(0).unwrap(), a);
    let path = store.entry_path("ee06");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    for err in [
        entry.read_all(0).map(|_| ()).unwrap_err(),
        entry
            .read_box(0, [30, 30, 30], [10, 10, 10])
            .map(|_| ())
            .unwrap_err(),
        entry
            .for_each_plane(0, |_| Some(PlaneRect::whole([40, 40])), |_, _, _| ())
            .unwrap_err(),
        entry.verify().unwrap_err(),
    ] {
        assert!(err.to_string().contains("shrank"), "{err}");
    }
}

/// Row flags of another height than the plane's are a caller's mistake,
/// refused at once rather than read past.
#[test]
#[should_panic(expected = "one row flag per row")]
fn plane_row_flags_of_another_height_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = CacheDir::new(dir.path()).unwrap();
    let a = wavy([1, 8, 8, 8], true);
    store
        .store(
            "cc05",
            "c.nii.gz",
            &[to_write("image", &a, StoredType::I16, None)],
        )
        .unwrap();
    let entry = Entry::open(&store.entry_path("cc05")).unwrap();
    let rows = [true; 7];
    let need = PlaneNeed {
        rect: PlaneRect::whole([8, 8]),
        rows: Some(&rows),
    };
    let _ = entry.for_each_plane(0, |_| Some(need), |_, _, _| ());
}
