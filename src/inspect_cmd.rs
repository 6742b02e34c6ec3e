//! `dino-run inspect FILE...`: a header summary per volume (header-only read).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dino3d_pipeline::formats::{self, Header, VolumeInfo};
use dino3d_pipeline::nifti::affine;

/// Arguments of `dino-run inspect`.
#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// Volumes to describe (.nii, .nii.gz, .hdr/.img, .mha, .mhd, .nrrd, .nhdr,
    /// DICOM files, series folders or FOLDER#SERIES_UID).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for file in &args.files {
        match formats::read_header(file) {
            Ok(info) => {
                if args.json {
                    println!("{}", json(file, &info));
                } else {
                    print_text(file, &info);
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The NIfTI codes, or the MetaImage/NRRD header fields.
fn header_facts(info: &VolumeInfo) -> serde_json::Value {
    match &info.header {
        Header::Nifti(h) => serde_json::json!({
            "qform_code": h.qform_code, "sform_code": h.sform_code,
        }),
        Header::MetaImage(f) | Header::Nrrd(f) | Header::Dicom(f) => serde_json::json!({
            "fields": f.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
            "data_files": info.data_paths,
        }),
    }
}

fn json(file: &Path, info: &VolumeInfo) -> serde_json::Value {
    let codes: String = affine::axcodes(&info.affine).iter().collect();
    let mut v = serde_json::json!({
        "file": file, "format": info.format, "dtype": info.dtype,
        "shape": info.disk_shape, "channels_first_shape": info.shape,
        "spacing": info.spacing, "affine": info.affine, "axcodes": codes,
        "scaling": info.scaling, "compressed": info.data_compressed,
        "encoding": info.encoding,
    });
    if let (Some(obj), serde_json::Value::Object(facts)) = (v.as_object_mut(), header_facts(info)) {
        obj.extend(facts);
    }
    v
}

fn print_text(file: &Path, info: &VolumeInfo) {
    let codes: String = affine::axcodes(&info.affine).iter().collect();
    println!("{}", file.display());
    println!(
        "  format    {}, {}",
        info.format.name(),
        info.encoding.name()
    );
    println!("  dtype     {}", info.dtype);
    println!(
        "  shape     {:?} -> (C, X, Y, Z) {:?}",
        info.disk_shape, info.shape
    );
    println!("  spacing   {:?}", info.spacing);
    match &info.header {
        Header::Nifti(h) => println!(
            "  axcodes   {codes} (qform_code {}, sform_code {})",
            h.qform_code, h.sform_code
        ),
        Header::MetaImage(_) | Header::Nrrd(_) => {
            println!("  axcodes   {codes} (RAS, from the header's LPS geometry)");
        }
        Header::Dicom(_) => println!(
            "  axcodes   {codes} (RAS, from ImagePositionPatient/ImageOrientationPatient, LPS)"
        ),
    }
    if let Some((s, i)) = info.scaling {
        println!("  scaling   value = stored * {s} + {i}");
    }
    for row in &info.affine {
        println!(
            "  affine    [{:>10.4} {:>10.4} {:>10.4} {:>10.4}]",
            row[0], row[1], row[2], row[3]
        );
    }
    if info.data_paths.iter().any(|p| p != &info.header_path) {
        // A DICOM series has a file per slice: show its ends only.
        let n = info.data_paths.len();
        for (i, p) in info.data_paths.iter().enumerate() {
            if n <= 6 || i < 2 || i + 2 >= n {
                println!("  data      {}", p.display());
            } else if i == 2 {
                println!("  data      ... {} more files", n - 4);
            }
        }
    }
    for (k, v) in info.header.fields() {
        println!("  {k:<24} {v}");
    }
}
