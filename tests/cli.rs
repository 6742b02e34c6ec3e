//! End-to-end tests of the `dino-run` binary on the bundled real volumes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dino_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dino-run"))
}

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn help_and_version_work_on_every_subcommand() {
    let v = run_ok(dino_run().arg("--version"));
    assert!(v.contains(env!("CARGO_PKG_VERSION")));
    for sub in [
        vec!["--help"],
        vec!["manifest", "--help"],
        vec!["manifest", "build", "--help"],
        vec!["manifest", "stats", "--help"],
        vec!["manifest", "split", "--help"],
        vec!["inspect", "--help"],
        vec!["convert", "--help"],
        vec!["recipe", "--help"],
        vec!["recipe", "check", "--help"],
        vec!["pipeline", "run", "--help"],
        vec!["cache", "warm", "--help"],
        vec!["cache", "verify", "--help"],
        vec!["visualize", "--help"],
        vec!["embed", "--help"],
        vec!["atlas-crops", "--help"],
    ] {
        let text = run_ok(dino_run().args(&sub));
        assert!(text.contains("Usage"), "{sub:?}: {text}");
    }
}

#[test]
fn manifest_build_writes_the_3dino_list_and_reports_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    let text = run_ok(
        dino_run()
            .args(["manifest", "build"])
            .arg(data().join("nifti"))
            .arg("-o")
            .arg(&out),
    );
    assert!(text.contains("volumes:"), "{text}");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    // 20 files: the 3 header-only pairs and the CIFTI file are rejected, 16 kept.
    assert_eq!(list.len(), 16, "{list:#?}");
    let rejects: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("m.rejects.json")).unwrap())
            .unwrap();
    assert_eq!(rejects.len(), 4, "{rejects:#?}");
    assert!(
        rejects
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("data file missing"))
    );
    // Entries are exactly 3DINO's keys, with paths relative to the manifest.
    let func = list
        .iter()
        .find(|e| e["image"].as_str().unwrap().ends_with("functional.nii"))
        .unwrap();
    assert_eq!(func.as_object().unwrap().len(), 3);
    assert_eq!(func["shape"], serde_json::json!([17, 21, 3, 20]));
    assert_eq!(func["spacing"], serde_json::json!([4.0, 4.0, 8.0]));
    let rel = func["image"].as_str().unwrap();
    assert!(!Path::new(rel).is_absolute());
    assert!(dir.path().join(rel).exists());

    // --strict makes rejects fatal and writes nothing.
    let strict_out = dir.path().join("strict.json");
    let status = dino_run()
        .args(["manifest", "build", "--strict"])
        .arg(data().join("nifti"))
        .arg("-o")
        .arg(&strict_out)
        .output()
        .unwrap();
    assert!(!status.status.success());
    assert!(!strict_out.exists());

    // --min-axis drops small volumes, as 3DINO's data_min_axis_size.
    let small = dir.path().join("small.json");
    run_ok(
        dino_run()
            .args(["manifest", "build", "--min-axis", "24", "--absolute"])
            .arg(data().join("nifti"))
            .arg("-o")
            .arg(&small),
    );
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&small).unwrap()).unwrap();
    assert!(list.iter().all(|e| {
        e["shape"].as_array().unwrap()[..3]
            .iter()
            .all(|d| d.as_u64().unwrap() > 24)
    }));
    assert!(
        list.iter()
            .all(|e| Path::new(e["image"].as_str().unwrap()).is_absolute())
    );
    assert!(list.len() < 16 && !list.is_empty());
}

#[test]
fn a_manifest_in_the_working_directory_gets_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        data().join("nifti/nibabel/anatomical.nii"),
        dir.path().join("a.nii"),
    )
    .unwrap();
    run_ok(
        dino_run()
            .current_dir(dir.path())
            .args(["manifest", "build", ".", "-o", "m.json"]),
    );
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("m.json")).unwrap()).unwrap();
    assert_eq!(list[0]["image"], "a.nii");
}

#[test]
fn parquet_manifest_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.parquet");
    run_ok(
        dino_run()
            .args(["manifest", "build"])
            .arg(data().join("volumes"))
            .arg("-o")
            .arg(&out),
    );
    let text = run_ok(dino_run().args(["manifest", "stats"]).arg(&out));
    assert!(text.contains("volumes: 6"), "{text}");
    assert!(text.contains("uint8") && text.contains("shape x"), "{text}");
    // A hand-written 3DINO list with unknown keys and null spacing loads unchanged.
    let hand = dir.path().join("hand.json");
    std::fs::write(
        &hand,
        r#"[{"image": "x.nii.gz", "shape": [100, 120, 90], "spacing": null, "site": 3},
            {"image": "y.nii.gz", "shape": [80, 80, 40, 2], "spacing": [1, 1, 2.5]}]"#,
    )
    .unwrap();
    let text = run_ok(dino_run().args(["manifest", "stats"]).arg(&hand));
    assert!(
        text.contains("volumes: 2") && text.contains("2 listed images do not exist"),
        "{text}"
    );
}

#[test]
fn split_pairs_images_with_labels_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let (imgs, labs) = (dir.path().join("imagesTr"), dir.path().join("labelsTr"));
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::create_dir_all(&labs).unwrap();
    let src = data().join("nifti/itk/KmeansTest_T1RawSkullStrip.nii.gz");
    for i in 0..10 {
        std::fs::copy(&src, imgs.join(format!("img{i:04}.nii.gz"))).unwrap();
        std::fs::copy(&src, labs.join(format!("label{i:04}.nii.gz"))).unwrap();
    }
    let run = |out: &Path, seed: &str| {
        run_ok(
            dino_run()
                .args(["manifest", "split", "--images"])
                .arg(&imgs)
                .arg("--labels")
                .arg(&labs)
                .args(["--ratios", "0.6,0.2,0.2", "--seed", seed, "-o"])
                .arg(out),
        );
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out).unwrap()).unwrap()
    };
    let a = run(&dir.path().join("a.json"), "1");
    let b = run(&dir.path().join("b.json"), "1");
    assert_eq!(a, b);
    assert_eq!(a["training"].as_array().unwrap().len(), 6);
    assert_eq!(a["validation"].as_array().unwrap().len(), 2);
    let first = &a["training"][0];
    let img = first["image"].as_str().unwrap();
    let lab = first["label"].as_str().unwrap();
    assert_eq!(
        img.replace("imagesTr/img", ""),
        lab.replace("labelsTr/label", "")
    );

    // CSV with integer labels: the classification variant.
    let csv = dir.path().join("classes.csv");
    let mut text = String::from("image,label\n");
    for i in 0..10 {
        text.push_str(&format!("imagesTr/img{i:04}.nii.gz,{}\n", i % 2));
    }
    std::fs::write(&csv, text).unwrap();
    let out = dir.path().join("cls.json");
    run_ok(
        dino_run()
            .args(["manifest", "split", "--csv"])
            .arg(&csv)
            .arg("-o")
            .arg(&out),
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(v["training"][0]["label"].is_i64());
}

#[test]
fn inspect_prints_geometry_and_fails_on_bad_files() {
    let text = run_ok(
        dino_run()
            .arg("inspect")
            .arg(data().join("nifti/nibabel/anatomical.nii")),
    );
    assert!(text.contains("int16") && text.contains("axcodes"), "{text}");
    let out = dino_run()
        .arg("inspect")
        .arg(data().join("nifti/nibabel/analyze.hdr"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data file missing"));
}

#[test]
fn metaimage_and_nrrd_are_inspected_and_listed() {
    let fixtures = data().join("other_formats/generated");
    let text = run_ok(
        dino_run()
            .arg("inspect")
            .arg(fixtures.join("ct_zlib_oblique.mha"))
            .arg(fixtures.join("detached_gzip.nhdr")),
    );
    assert!(
        text.contains("metaimage, zlib") && text.contains("nrrd, gzip"),
        "{text}"
    );
    assert!(
        text.contains("ElementType") && text.contains("detached_gzip.raw.gz"),
        "{text}"
    );
    let json = run_ok(
        dino_run()
            .args(["inspect", "--json"])
            .arg(fixtures.join("rgb_like_3ch.mha")),
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["format"], "metaimage");
    assert_eq!(v["channels_first_shape"], serde_json::json!([3, 12, 10, 8]));

    // manifest build keeps headers (never .raw/.zraw data halves), one entry each;
    // the Parquet manifest names the format.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    run_ok(
        dino_run()
            .args(["manifest", "build"])
            .arg(data().join("other_formats/itk"))
            .arg(data().join("other_formats/generated"))
            .arg("-o")
            .arg(&out),
    );
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(list.len(), 27, "{list:#?}");
    assert!(list.iter().all(|e| {
        let p = e["image"].as_str().unwrap();
        [".mha", ".mhd", ".nrrd", ".nhdr"]
            .iter()
            .any(|x| p.ends_with(x))
    }));
    let pq = dir.path().join("m.parquet");
    run_ok(
        dino_run()
            .args(["manifest", "build"])
            .arg(data().join("other_formats/itk"))
            .arg("-o")
            .arg(&pq),
    );
    let rows = dino3d_pipeline::manifest::read_manifest(&pq).unwrap();
    let formats: Vec<&str> = rows
        .iter()
        .map(|r| r.extra["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, ["metaimage", "metaimage", "nrrd"]);
}

#[test]
fn dicom_series_are_inspected_listed_and_converted() {
    let generated = data().join("other_formats/dicom_generated");
    let text = run_ok(
        dino_run()
            .arg("inspect")
            .arg(data().join("other_formats/dicom/CT5N_series")),
    );
    assert!(
        text.contains("dicom, raw")
            && text.contains("SeriesInstanceUID")
            && text.contains("value = stored * 1 + -1024")
            && text.contains("(C, X, Y, Z) [1, 16, 16, 5]"),
        "{text}"
    );

    // One entry per series (FOLDER#UID where a folder holds two); bad
    // series and files are rejects naming the file, and the build goes on.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.parquet");
    let bad = generated.join("bad");
    run_ok(
        dino_run()
            .args(["manifest", "build"])
            .arg(generated.join("two_series"))
            .arg(generated.join("oblique"))
            .arg(generated.join("rescale"))
            .arg(bad.join("missing_slice"))
            .arg(bad.join("mixed_sizes"))
            .arg(bad.join("truncated.dcm"))
            .arg("-o")
            .arg(&out),
    );
    let rows = dino3d_pipeline::manifest::read_manifest(&out).unwrap();
    let images: Vec<&str> = rows.iter().map(|r| r.image.as_str()).collect();
    assert_eq!(images.len(), 4, "{images:?}");
    assert!(
        images[2].ends_with("two_series#1.2.826.0.1.3680043.10.1078.1"),
        "{images:?}"
    );
    assert!(rows.iter().all(|r| r.extra["format"] == "dicom"));
    let rejects = std::fs::read_to_string(dir.path().join("m.rejects.json")).unwrap();
    for want in ["gap", "slice02.dcm", "mixed", "truncated.dcm"] {
        assert!(rejects.contains(want), "{want}: {rejects}");
    }

    // convert: the same voxels, scaling and affine as NIfTI.
    let nii = dir.path().join("oblique.nii.gz");
    let text = run_ok(
        dino_run()
            .arg("convert")
            .arg(generated.join("oblique"))
            .arg(&nii),
    );
    assert!(text.contains("16x16x5"), "{text}");
    let a = dino3d_pipeline::formats::read_volume(generated.join("oblique")).unwrap();
    let b = dino3d_pipeline::formats::read_volume(&nii).unwrap();
    assert_eq!((a.data, a.scaling), (b.data, b.scaling));
    assert!(
        a.affine
            .iter()
            .flatten()
            .zip(b.affine.iter().flatten())
            .all(|(x, y)| (x - y).abs() < 1e-5)
    );
    let out = dino_run()
        .arg("convert")
        .arg(bad.join("missing_slice"))
        .arg(dir.path().join("x.nii"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("gap"), "{err}");
}

#[test]
fn recipe_check_prints_the_plan_or_line_numbered_errors() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = run_ok(
        dino_run()
            .args(["recipe", "check"])
            .arg(root.join("recipes/prepare.yaml")),
    );
    assert!(
        text.contains("cached prefix (6 steps, hash") && text.contains("CropForeground"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "task: prepare\npipeline:\n  - name: LoadImage\n  - name: CropForegrund\n",
    )
    .unwrap();
    let out = dino_run()
        .args(["recipe", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "bad.yaml:4:11: unknown transform `CropForegrund` (did you mean `CropForeground`?)"
        ),
        "{err}"
    );
}

/// A copy of recipes/pretrain.yaml reading the bundled volumes and caching in `cache`.
fn pretrain_recipe(dir: &Path) -> PathBuf {
    recipe_copy(dir, "pretrain.yaml")
}

/// A copy of a shipped recipe reading the bundled volumes, caching in
/// `dir/cache` and writing training outputs to `dir/out`.
fn recipe_copy(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("recipes")
            .join(name),
    )
    .unwrap()
    .replace(
        "manifest: brain_images.json",
        &format!(
            "manifest: {}",
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("recipes/brain_images.json")
                .display()
        ),
    )
    .replace(
        "dir: ../out/cache",
        &format!("dir: {}", dir.join("cache").display()),
    );
    let text = regex_free_replace_output_dir(&text, &dir.join("out"));
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The small pretraining run of the `pipeline run` test: two local crops,
/// batches of two, a zstd cache of 16³ chunks.
const SMALL_RUN: [&str; 8] = [
    "--set",
    "views.2.count=2",
    "--set",
    "batch.size=2",
    "--set",
    "cache.codec=zstd",
    "--set",
    "cache.chunk=16",
];

#[test]
fn pipeline_run_streams_batches_through_the_cache_and_saves_crops() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = pretrain_recipe(dir.path());
    let out = run_ok(
        dino_run()
            .args(["pipeline", "run"])
            .arg(&recipe)
            .args(["--batches", "3"])
            .args(SMALL_RUN)
            .arg("--save-batch")
            .arg(dir.path().join("b0")),
    );
    assert!(
        out.contains("6 samples in") && out.contains("0 item(s) skipped"),
        "{out}"
    );
    assert!(
        out.contains("cache: 0 hits, ") || out.contains("hits"),
        "{out}"
    );
    // 2 samples x (2 global + 2 local) crops, and the masks.
    let saved = std::fs::read_dir(dir.path().join("b0")).unwrap().count();
    assert_eq!(saved, 2 * 4 + 1);
    let masks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("b0/masks.json")).unwrap())
            .unwrap();
    assert_eq!(masks["tokens"], 216);
    // x-fastest batches (what a GPU takes) hold the same crops: saved as
    // volumes, byte for byte the same files; an unknown order is refused.
    let x_order = |order: &str, to: &str| {
        let mut cmd = dino_run();
        cmd.args(["pipeline", "run"]).arg(&recipe);
        cmd.args(["--batches", "1"]).args(SMALL_RUN);
        cmd.args(["--batch-order", order]);
        cmd.arg("--save-batch").arg(dir.path().join(to));
        cmd
    };
    run_ok(&mut x_order("x", "b0x"));
    for entry in std::fs::read_dir(dir.path().join("b0")).unwrap() {
        let path = entry.unwrap().path();
        let twin = dir.path().join("b0x").join(path.file_name().unwrap());
        assert!(
            std::fs::read(&path).unwrap() == std::fs::read(&twin).unwrap(),
            "{} differs in x order",
            path.display()
        );
    }
    let refused = x_order("y", "b0y").output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("possible values: z, x"), "{err}");
    let stats = run_ok(
        dino_run()
            .args(["cache", "stats"])
            .arg(dir.path().join("cache")),
    );
    assert!(
        stats.contains("uint8 + window, zstd chunks of [16, 16, 16]"),
        "the recipe's codec and chunk: {stats}"
    );
}

#[test]
fn a_killed_warm_leaves_nothing_invalid_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = pretrain_recipe(dir.path());
    let cache = dir.path().join("cache");
    let mut child = dino_run()
        .args(["cache", "warm"])
        .arg(&recipe)
        .args(["--threads", "2"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Whatever the kill interrupted, nothing readable is damaged.
    run_ok(dino_run().args(["cache", "verify"]).arg(&cache));
    let warm = run_ok(
        dino_run()
            .args(["cache", "warm"])
            .arg(&recipe)
            .args(["--shard", "0/2"]),
    );
    assert!(
        warm.contains("2 items (shard 0/2)") && warm.contains("0 failed"),
        "{warm}"
    );
    let warm = run_ok(dino_run().args(["cache", "warm"]).arg(&recipe));
    assert!(
        warm.contains("3 items") && warm.contains("0 failed"),
        "{warm}"
    );
    let again = run_ok(dino_run().args(["cache", "warm"]).arg(&recipe));
    assert!(again.contains("3 hits, 0 built"), "{again}");
    let verify = run_ok(dino_run().args(["cache", "verify"]).arg(&cache));
    assert!(verify.contains("3 entries checked, 0 damaged"), "{verify}");
    // Damage one entry: verify fails and names it; gc keeps the 6 live entries.
    let entry = walk(&cache)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "d3c"))
        .unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let out = dino_run()
        .args(["cache", "verify"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(&entry.display().to_string()), "{text}");
    let gc = run_ok(dino_run().args(["cache", "gc"]).arg(&recipe));
    assert!(gc.contains("3 entries reachable"), "{gc}");
}

/// A randomly initialised `tiny` backbone saved as a dino3d teacher
/// checkpoint (parameters under `backbone.`).
fn random_tiny_checkpoint(path: &Path) {
    use dino3d_model::candle_core::Device;
    use dino3d_model::{ViT3d, ViT3dConfig};
    let (_vit, varmap) = ViT3d::with_varmap(ViT3dConfig::tiny(), &Device::Cpu).unwrap();
    let tensors = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (format!("backbone.{k}"), v.as_tensor().clone()))
        .collect();
    dino3d_model::checkpoint::save_tensors(&tensors, path).unwrap();
}

#[test]
fn visualize_writes_maps_on_the_source_grid_and_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("tiny.safetensors");
    random_tiny_checkpoint(&weights);
    // A real T1 head (128 x 128 x 62, 2 x 2 x 3 mm, LSA).
    let image = data().join("nifti/itk/KmeansTest_T1UCharRaw.nii.gz");
    let source = dino3d_pipeline::nifti::read_volume(&image).unwrap();
    let visualize = |out: &Path, extra: &[&str]| {
        run_ok(
            dino_run()
                .args(["visualize", "--arch", "tiny", "--weights"])
                .arg(&weights)
                .arg("--image")
                .arg(&image)
                .arg("--out")
                .arg(out)
                .args(extra),
        )
    };
    let pca = dir.path().join("pca");
    let text = visualize(&pca, &["--vis-type", "pca"]);
    assert!(text.contains("pca.png"), "{text}");
    let mhsa = dir.path().join("mhsa");
    visualize(
        &mhsa,
        &[
            "--vis-type",
            "mhsa",
            "--input-type",
            "sliding_window",
            "--size",
            "32",
            "--block",
            "1",
        ],
    );
    for (folder, files) in [
        (
            &pca,
            &[
                "image.nii.gz",
                "pca.nii.gz",
                "pca_foreground.nii.gz",
                "pca_rgb.nii.gz",
                "pca.png",
                "pca.gif",
            ][..],
        ),
        (
            &mhsa,
            &[
                "image.nii.gz",
                "attention.nii.gz",
                "attention_head00.png",
                "attention_head02.png",
                "attention.gif",
            ][..],
        ),
    ] {
        for f in files {
            let p = folder.join(f);
            assert!(
                std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false),
                "{}",
                p.display()
            );
        }
        let png = std::fs::read(folder.join(files[files.len() - 2])).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let gif = std::fs::read(folder.join(files[files.len() - 1])).unwrap();
        assert_eq!(&gif[..6], b"GIF89a");
    }
    // Maps read back on the source's grid with its affine.
    let [_, x, y, z] = source.shape;
    for (path, channels) in [
        (pca.join("pca.nii.gz"), 10),
        (pca.join("pca_foreground.nii.gz"), 1),
        (pca.join("image.nii.gz"), 1),
        (mhsa.join("attention.nii.gz"), 3),
    ] {
        let map = dino3d_pipeline::nifti::read_volume(&path).unwrap();
        assert_eq!(map.shape, [channels, x, y, z], "{}", path.display());
        assert_eq!(map.affine, source.affine, "{}", path.display());
    }
    let pcs = dino3d_pipeline::nifti::read_volume(pca.join("pca.nii.gz"))
        .unwrap()
        .to_f32();
    assert!(pcs.iter().all(|v| (0.0..=1.0).contains(v)));
    let fg = dino3d_pipeline::nifti::read_volume(pca.join("pca_foreground.nii.gz"))
        .unwrap()
        .to_f32();
    assert!(
        fg.contains(&0.0) && fg.contains(&1.0),
        "foreground and background"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Points `train.output_dir` at `out`.
fn regex_free_replace_output_dir(text: &str, out: &Path) -> String {
    text.lines()
        .map(|l| match l.trim_start().strip_prefix("output_dir:") {
            Some(_) => format!("  output_dir: {}", out.display()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The demo recipe shrunk to seconds: small crops, 2 locals, batch 2, small
/// heads, 8 iterations with a checkpoint every 2.
const SMALL_DEMO: [&str; 13] = [
    "views.0.pipeline.0.size=32",
    "views.1.pipeline.0.size=32",
    "views.2.pipeline.0.size=16",
    "views.2.count=2",
    "batch.size=2",
    "model.head_n_prototypes=256",
    "model.head_hidden_dim=64",
    "model.head_bottleneck_dim=32",
    "optim.epochs=2",
    "optim.epoch_length=4",
    "train.checkpoint_period=2",
    "train.eval_period_iterations=4",
    "batch.threads=2",
];

fn small_demo(recipe: &Path) -> Command {
    let mut cmd = dino_run();
    cmd.arg(recipe);
    for s in SMALL_DEMO {
        cmd.args(["--set", s]);
    }
    cmd
}

/// Every deterministic field of metrics.jsonl (timings dropped).
fn losses(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["data_wait_s", "compute_s", "samples_per_s"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

#[test]
fn pretraining_killed_with_sigkill_resumes_and_reproduces_every_loss() {
    let a = tempfile::tempdir().unwrap();
    let recipe_a = recipe_copy(a.path(), "demo.yaml");
    let done = run_ok(&mut small_demo(&recipe_a));
    assert!(done.contains("iterations 0..8 of 8"), "{done}");
    let reference = losses(&a.path().join("out"));
    assert_eq!(reference.len(), 8);
    // The loss is finite and the teacher checkpoints are where 3DINO puts them.
    assert!(
        reference
            .iter()
            .all(|r| r["loss"].as_f64().unwrap().is_finite())
    );
    for it in [3, 7] {
        let t = a.path().join(format!(
            "out/eval/training_{it}/teacher_checkpoint.safetensors"
        ));
        assert!(t.exists(), "{}", t.display());
    }
    assert!(a.path().join("out/loss.png").exists());

    // High-resolution adaptation (spec §2.7): start a run with larger global
    // crops from that teacher; the 2³ position grid is resized to 3³.
    let teacher = a
        .path()
        .join("out/eval/training_7/teacher_checkpoint.safetensors");
    let c = tempfile::tempdir().unwrap();
    let recipe_c = recipe_copy(c.path(), "demo.yaml");
    let hr = run_ok(
        small_demo(&recipe_c)
            .args(["--set", "views.0.pipeline.0.size=48"])
            .args(["--set", "views.1.pipeline.0.size=48"])
            .args([
                "--set",
                &format!("model.pretrained_weights={}", teacher.display()),
            ])
            .args(["--set", "train.max_iterations=1"]),
    );
    assert!(
        hr.contains("into student and teacher (position grid 3³)"),
        "{hr}"
    );
    assert!(hr.contains("iterations 0..1 of 8"), "{hr}");

    // Same run, killed with SIGKILL once its second checkpoint exists.
    let b = tempfile::tempdir().unwrap();
    let recipe_b = recipe_copy(b.path(), "demo.yaml");
    let ckpt = b.path().join("out/checkpoints/iter_000000004");
    let mut child = small_demo(&recipe_b)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(
            t0.elapsed().as_secs() < 600,
            "no checkpoint after 10 minutes"
        );
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished_before_kill = b.path().join("out/checkpoints/iter_000000008").exists();
    assert!(
        !finished_before_kill,
        "the run ended before it could be killed"
    );
    let resumed = run_ok(&mut small_demo(&recipe_b));
    assert!(resumed.contains("resuming at iteration"), "{resumed}");
    assert_eq!(losses(&b.path().join("out")), reference);
    // Nothing left to do: a rerun says so.
    let again = run_ok(&mut small_demo(&recipe_b));
    assert!(again.contains("nothing to do: 8 of 8"), "{again}");
}

#[test]
fn pretraining_skips_a_corrupt_volume_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe_copy(dir.path(), "demo.yaml");
    let bad = dir.path().join("corrupt.nii.gz");
    std::fs::write(&bad, b"not a volume at all").unwrap();
    let good = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/volumes/colin27_mricron/ch2bet.nii.gz");
    let manifest = dir.path().join("m.json");
    std::fs::write(
        &manifest,
        format!(
            "[{{\"image\": \"{}\"}}, {{\"image\": \"{}\"}}]",
            good.display(),
            bad.display()
        ),
    )
    .unwrap();
    let out = run_ok(
        small_demo(&recipe)
            .args(["--set", &format!("data.manifest={}", manifest.display())])
            .args(["--set", "train.max_iterations=2"]),
    );
    assert!(
        out.contains("skipped") && out.contains("corrupt.nii.gz"),
        "{out}"
    );
    assert!(out.contains("iterations 0..2 of 8"), "{out}");
    let skipped: u64 = losses(&dir.path().join("out"))
        .iter()
        .map(|r| r["skipped"].as_u64().unwrap())
        .sum();
    assert!(skipped >= 1);
}

#[test]
fn segment_finetunes_a_head_and_writes_scores_predictions_and_curves() {
    for (head, train_backbone) in [
        ("unetr", false),
        ("linear", false),
        ("unetr", true),
        ("vit_adapter", false),
    ] {
        segment_demo_at_tiny_scale(head, train_backbone);
    }
}

fn segment_demo_at_tiny_scale(head: &str, train_backbone: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The shipped recipe at a tiny scale: 6 mm voxels, 16³ crops, a random
    // backbone, two iterations.
    let out = dir.path().join("seg");
    let text = run_ok(
        dino_run()
            .current_dir(root)
            .arg("recipes/segment_demo.yaml")
            .args([
                "--set",
                "segment.pretrained_weights=random",
                "--set",
                "segment.spacing_mm=6",
                "--set",
                "segment.image_size=16",
                "--set",
                "segment.feature_size=4",
                "--set",
                "segment.iterations=2",
                "--set",
                "segment.eval_iters=1",
                "--set",
                "segment.batch_size=1",
                "--set",
                "segment.flip_prob=0.5",
                "--set",
                "segment.rot90_prob=0.5",
                "--set",
                "segment.intensity_shift_prob=0.5",
            ])
            .arg("--set")
            .arg(format!("segment.head={head}"))
            .arg("--set")
            .arg(format!("segment.train_feature_model={train_backbone}"))
            .arg("--set")
            .arg(format!("segment.output_dir={}", out.display())),
    );
    assert!(text.contains("test mean Dice"), "{text}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["classes"].as_array().unwrap().len(), 3);
    assert_eq!(results["loss_curve"].as_array().unwrap().len(), 2);
    assert_eq!(results["val_dice_curve"].as_array().unwrap().len(), 2);
    let dice = results["test_dice_per_class"].as_array().unwrap();
    assert_eq!(dice.len(), 3);
    for d in dice {
        let d = d.as_f64().expect("every class is in the test region");
        assert!((0.0..=1.0).contains(&d), "{d}");
    }
    assert_eq!(
        results["test_hd95_per_class_mm"].as_array().unwrap().len(),
        3
    );
    let pred = out.join("mni152_test_pred.nii.gz");
    let vol = dino3d_pipeline::nifti::read_volume(&pred).unwrap();
    assert_eq!(vol.shape[0], 1);
    assert!(
        vol.spacing.iter().all(|&s| (s - 6.0).abs() < 0.5),
        "{:?}",
        vol.spacing
    );
    assert!(out.join("curves.png").exists() && out.join("best_head.safetensors").exists());
}

/// BraTS-style finetuning end to end on synthetic volumes: two modalities
/// under `image1`/`image2` concatenated as channels, labels 1/2/3 trained as
/// the TC/WT/ET regions with sigmoid outputs, scored per region, and the
/// prediction written back as a 0–3 label map.
#[test]
fn segment_trains_brats_regions_from_multi_modal_datalists() {
    use dino3d_pipeline::nifti::{WriteOptions, affine::IDENTITY, write_volume};
    use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};
    let dir = tempfile::tempdir().unwrap();
    let n = 20usize;
    let write = |name: &str, data: VoxelData| {
        let vol = Volume {
            data,
            shape: [1, n, n, n],
            spacing: [1.0; 3],
            affine: IDENTITY,
            scaling: None,
            meta: VolumeMeta {
                qform_code: 1,
                sform_code: 1,
                ..VolumeMeta::default()
            },
        };
        write_volume(dir.path().join(name), &vol, &WriteOptions::default()).unwrap();
    };
    let mut items = Vec::new();
    for case in 0..3usize {
        // A "tumour" of nested shells: enhancing core (3), necrosis (1), oedema (2).
        let centre = [8.0 + case as f64, 10.0, 9.0];
        let (mut label, mut t1, mut t2) = (Vec::new(), Vec::new(), Vec::new());
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let d = ((x as f64 - centre[0]).powi(2)
                        + (y as f64 - centre[1]).powi(2)
                        + (z as f64 - centre[2]).powi(2))
                    .sqrt();
                    let l: u8 = match d {
                        d if d < 2.0 => 3,
                        d if d < 3.5 => 1,
                        d if d < 6.0 => 2,
                        _ => 0,
                    };
                    label.push(l);
                    t1.push(100.0 + 50.0 * f32::from(l) + ((x * 7 + y * 3 + z) % 5) as f32);
                    t2.push(300.0 - 40.0 * f32::from(l) + ((x + y * 5 + z * 3) % 7) as f32);
                }
            }
        }
        write(&format!("c{case}_t1.nii.gz"), VoxelData::F32(t1.into()));
        write(&format!("c{case}_t2.nii.gz"), VoxelData::F32(t2.into()));
        write(&format!("c{case}_seg.nii.gz"), VoxelData::U8(label.into()));
        items.push(serde_json::json!({
            "image1": format!("c{case}_t1.nii.gz"),
            "image2": format!("c{case}_t2.nii.gz"),
            "label": format!("c{case}_seg.nii.gz"),
        }));
    }
    let list = serde_json::json!({
        "training": [items[0]], "validation": [items[1]], "test": [items[2]],
    });
    std::fs::write(dir.path().join("brats.json"), list.to_string()).unwrap();
    let recipe = dir.path().join("brats.yaml");
    std::fs::write(
        &recipe,
        "task: segment\nseed: 0\ndata:\n  keys: [image1, image2, label]\npipeline:\n  - name: LoadImage\n  - name: ScaleIntensityRangePercentiles\n    keys: [image1, image2]\n    lower: 0.05\n    upper: 99.95\n    b_min: -1\n    b_max: 1\n    clip: true\nsegment:\n  datalist: brats.json\n  regions: brats\n  pretrained_weights: random\n  arch: tiny\n  feature_size: 4\n  image_size: 16\n  batch_size: 1\n  crops_per_volume: 2\n  iterations: 2\n  eval_iters: 1\n  warmup_iters: 1\n  output_dir: out\n",
    )
    .unwrap();
    let text = run_ok(dino_run().arg(&recipe));
    assert!(text.contains("test mean Dice"), "{text}");
    let out = dir.path().join("out");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["classes"], serde_json::json!(["TC", "WT", "ET"]));
    let dice = results["test_dice_per_class"].as_array().unwrap();
    assert_eq!(dice.len(), 3);
    for d in dice {
        let d = d.as_f64().expect("every region is in the test case");
        assert!((0.0..=1.0).contains(&d), "{d}");
    }
    assert_eq!(
        results["test_hd95_per_class_mm"].as_array().unwrap().len(),
        3
    );
    // Cases are named after their first image.
    let pred = dino3d_pipeline::nifti::read_volume(out.join("c2_t1.nii.gz_pred.nii.gz")).unwrap();
    assert_eq!(pred.shape, [1, n, n, n]);
    let labels = pred.to_f32();
    assert!(labels.iter().all(|&v| [0.0, 1.0, 2.0, 3.0].contains(&v)));
}

/// The linear probe's example at a tiny scale: labelled Colin27 crops, then
/// the shipped recipe on a random `tiny` checkpoint, a few iterations.
#[test]
fn linear_probe_example_runs_and_reports_on_validation_and_test() {
    let dir = tempfile::tempdir().unwrap();
    let crops = dir.path().join("crops");
    let made = run_ok(
        dino_run()
            .args(["atlas-crops", "--size", "32", "--per-class", "5", "--data"])
            .arg(data())
            .arg("--out")
            .arg(&crops),
    );
    assert!(
        made.contains("training 16, validation 4, test 20"),
        "{made}"
    );
    let weights = dir.path().join("tiny.safetensors");
    random_tiny_checkpoint(&weights);
    let out = dir.path().join("probe");
    let recipe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("recipes/linear_probe.yaml");
    let sets = [
        format!("data.manifest={}", crops.join("datalist.json").display()),
        format!("probe.pretrained_weights={}", weights.display()),
        format!("probe.output_dir={}", out.display()),
        "probe.image_size=16".into(),
        "probe.epochs=2".into(),
        "probe.epoch_length=10".into(),
        "probe.batch_size=8".into(),
        "probe.eval_period_iterations=5".into(),
        "probe.learning_rates=[0.01, 1.0]".into(),
    ];
    let mut cmd = dino_run();
    cmd.arg(&recipe);
    for s in &sets {
        cmd.args(["--set", s]);
    }
    let text = run_ok(&mut cmd);
    assert!(text.contains("16 / 4 / 20 volumes, 4 classes"), "{text}");
    assert!(text.contains("pretrained: best classifier_"), "{text}");
    assert!(text.contains("random_init: best classifier_"), "{text}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["classifiers"], 8, "2 n_last_blocks x 2 avgpool x 2 lrs");
    assert_eq!(r["counts"]["test"], 20);
    for name in ["pretrained", "random_init"] {
        let p = &r["results"][name];
        // Evaluations at 5, 10, 15, 20; the reported classifier is the
        // best on validation.
        assert_eq!(p["history"].as_array().unwrap().len(), 4);
        let val = p["val_accuracy_by_classifier"].as_object().unwrap();
        let best = val
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(p["val_accuracy"].as_f64().unwrap(), best);
        let cm = p["confusion_matrix"].as_array().unwrap();
        let total: u64 = cm
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(total, 20);
        let diag: u64 = (0..4).map(|i| cm[i][i].as_u64().unwrap()).sum();
        assert_eq!(diag as f64 / 20.0, p["test_accuracy"].as_f64().unwrap());
        let logits: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(p["test_logits"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        assert_eq!(logits["logits"].as_array().unwrap().len(), 20);
        assert_eq!(logits["classifier"], p["best_classifier"]);
    }
}

/// `task: embed` on the bundled brains with a random `tiny` checkpoint: one
/// Parquet row per volume, in row groups of 2.
#[test]
fn embed_recipe_writes_a_parquet_row_per_volume() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("tiny.safetensors");
    random_tiny_checkpoint(&weights);
    let recipe = recipe_copy(dir.path(), "embed.yaml");
    let out = dir.path().join("e.parquet");
    let text = run_ok(
        dino_run()
            .arg(&recipe)
            .args([
                "--set",
                &format!("embed.pretrained_weights={}", weights.display()),
            ])
            .args(["--set", &format!("embed.out={}", out.display())])
            .args(["--set", "embed.image_size=32", "--set", "embed.row_group=2"]),
    );
    assert!(
        text.contains("3 of 3 volumes embedded (192 dims, with patch tokens), 0 skipped"),
        "{text}"
    );
    assert!(text.contains("volumes/s, reading included)"), "{text}");
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(reader.metadata().num_row_groups(), 2);
    let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);
}

/// `--device` on the recipe runner's embed task and on the `embed` and
/// `visualize` commands: `cpu` runs (as above), a bad name is refused naming
/// it, and CUDA in a build without it says how to get it.
#[test]
fn device_is_parsed_by_embed_and_visualize_and_refused_where_cpu_only() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("tiny.safetensors");
    random_tiny_checkpoint(&weights);
    let image = data().join("volumes/colin27_mricron/ch2bet.nii.gz");
    let fail = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{cmd:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let w = weights.display().to_string();
    let im = image.display().to_string();
    let o = dir.path().join("o").display().to_string();
    for sub in ["embed", "visualize"] {
        let args = [
            "--weights",
            &w,
            "--arch",
            "tiny",
            "--image",
            &im,
            "--out",
            &o,
        ];
        let e = fail(dino_run().arg(sub).args(args).args(["--device", "gpu1"]));
        assert!(
            e.contains("--device gpu1: expected cpu, cuda or cuda:N"),
            "{sub}: {e}"
        );
        if !cfg!(feature = "cuda") {
            let e = fail(dino_run().arg(sub).args(args).args(["--device", "cuda:0"]));
            assert!(e.contains("built without CUDA"), "{sub}: {e}");
        }
    }
    let recipe = recipe_copy(dir.path(), "embed.yaml");
    if !cfg!(feature = "cuda") {
        let e = fail(dino_run().arg(&recipe).args(["--device", "cuda"]));
        assert!(e.contains("built without CUDA"), "{e}");
    }
}

/// Defect 8 of the reliability issue: output into a pipe that closes early
/// (`| head`) ends the process quietly instead of panicking.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let file = data().join("nifti/nibabel/anatomical.nii");
    // Far more than a pipe buffer of output, so writes meet the closed pipe.
    let files = vec![file.display().to_string(); 400].join(" ");
    let err = dir.path().join("stderr.txt");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} inspect {files} 2>{} | head -c 1 >/dev/null",
            env!("CARGO_BIN_EXE_dino-run"),
            err.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "head's status");
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}

/// Defect 14: an error quoting its cause (as I/O errors do) says it once.
#[test]
fn os_errors_are_said_once() {
    let out = dino_run()
        .args(["inspect", "/nonexistent/dino3d/scan.nii.gz"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("/nonexistent/dino3d/scan.nii.gz"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}

/// Defect 9: cache commands on a folder that does not exist, or on a file,
/// fail clearly instead of creating it and reporting an empty cache.
#[test]
fn cache_commands_refuse_missing_folders() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo");
    for sub in ["verify", "stats"] {
        let out = dino_run()
            .args(["cache", sub])
            .arg(&missing)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("typo"), "{sub}: {err}");
        assert!(!missing.exists(), "{sub} created the folder");
    }
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = dino_run()
        .args(["cache", "stats"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a cache folder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Defect 4 of the reliability issue: a cache folder that cannot be written
/// stops pretraining and `pipeline run` at start with a clear error; with
/// `--allow-uncached` pretraining goes on, saying so in its banner and in
/// metrics.jsonl.
#[test]
fn an_unwritable_cache_stops_at_start_or_is_said_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe_copy(dir.path(), "demo.yaml");
    let cache = dir.path().join("cache");
    // A folder where the write probe goes: unwritable even for root.
    std::fs::create_dir_all(cache.join(".write-check")).unwrap();
    let set_cache = format!("cache.dir={}", cache.display());
    let out = small_demo(&recipe)
        .args(["--set", &set_cache])
        .args(["--set", "train.max_iterations=1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot be written") && err.contains("--allow-uncached"),
        "{err}"
    );
    assert!(!dir.path().join("out/metrics.jsonl").exists());
    let run = dino_run()
        .args(["pipeline", "run"])
        .arg(&recipe)
        .args(["--set", &set_cache, "--batches", "1"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("cannot be written"));
    let ok = run_ok(
        small_demo(&recipe)
            .args(["--set", &set_cache])
            .args(["--set", "train.max_iterations=1"])
            .arg("--allow-uncached"),
    );
    assert!(ok.contains("NOT WRITABLE"), "{ok}");
    let records = losses(&dir.path().join("out"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["cache_unwritable"], true);
    assert!(
        records[0]["threedino_total_loss"]
            .as_f64()
            .unwrap()
            .is_finite()
    );
}

/// Defects 11 and 12: `train.max_iterations` is where the run stops in all
/// (a resumed run does not add it again), and resuming never rewrites the
/// lines of iterations already done.
#[test]
fn max_iterations_is_a_total_and_resume_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = recipe_copy(dir.path(), "demo.yaml");
    let first = run_ok(small_demo(&recipe).args(["--set", "train.max_iterations=2"]));
    assert!(first.contains("iterations 0..2 of 8"), "{first}");
    let metrics = dir.path().join("out/metrics.jsonl");
    let before = std::fs::read_to_string(&metrics).unwrap();
    let again = run_ok(small_demo(&recipe).args(["--set", "train.max_iterations=2"]));
    assert!(again.contains("nothing to do: 2 of 8"), "{again}");
    let more = run_ok(small_demo(&recipe).args(["--set", "train.max_iterations=4"]));
    assert!(more.contains("iterations 2..4 of 8"), "{more}");
    let after = std::fs::read_to_string(&metrics).unwrap();
    assert!(after.starts_with(&before), "earlier lines rewritten");
    assert_eq!(after.lines().count(), 4);
}
