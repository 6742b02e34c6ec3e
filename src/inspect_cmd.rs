//! `dino-run inspect FILE...`: a header summary per volume (header-only read).

use std::path::PathBuf;
use std::process::ExitCode;

use dino3d_pipeline::nifti::{self, affine};

/// Arguments of `dino-run inspect`.
#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// Volumes to describe (.nii, .nii.gz, .hdr/.img).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for file in &args.files {
        match nifti::read_header(file) {
            Ok(info) => {
                let codes: String = affine::axcodes(&info.affine).iter().collect();
                if args.json {
                    let v = serde_json::json!({
                        "file": file, "format": info.header.version, "dtype": info.dtype,
                        "shape": info.disk_shape, "channels_first_shape": info.shape,
                        "spacing": info.spacing, "affine": info.affine, "axcodes": codes,
                        "scaling": info.scaling, "compressed": info.data_compressed,
                        "qform_code": info.header.qform_code, "sform_code": info.header.sform_code,
                    });
                    println!("{v}");
                } else {
                    println!("{}", file.display());
                    println!(
                        "  format    {:?}, {}",
                        info.header.version,
                        if info.data_compressed { "gzip" } else { "raw" }
                    );
                    println!("  dtype     {}", info.dtype);
                    println!(
                        "  shape     {:?} -> (C, X, Y, Z) {:?}",
                        info.disk_shape, info.shape
                    );
                    println!("  spacing   {:?}", info.spacing);
                    println!(
                        "  axcodes   {codes} (qform_code {}, sform_code {})",
                        info.header.qform_code, info.header.sform_code
                    );
                    if let Some((s, i)) = info.scaling {
                        println!("  scaling   value = stored * {s} + {i}");
                    }
                    for row in &info.affine {
                        println!(
                            "  affine    [{:>10.4} {:>10.4} {:>10.4} {:>10.4}]",
                            row[0], row[1], row[2], row[3]
                        );
                    }
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
