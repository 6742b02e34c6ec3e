//! Segmentation cases in the model's layout: image `(C, X, Y, Z)` and labels
//! `(X, Y, Z)`, z fastest, with the geometry to write predictions back.
//! From a datalist (prepared by the recipe's pipeline, image and label keys)
//! or from the bundled MNI152 tissue maps split into disjoint regions.

use std::path::Path;

use dino3d_pipeline::exec::Pipeline;
use dino3d_pipeline::layout::to_z_fastest;
use dino3d_pipeline::manifest::ManifestEntry;
use dino3d_pipeline::manifest::split::{Datalist, DatalistItem};
use dino3d_pipeline::nifti::affine::Affine;
use dino3d_pipeline::transforms::Image;

use crate::error::{Context, Result, bail};
use crate::progress::Progress;

/// One volume and its labels.
#[derive(Debug, Clone)]
pub(crate) struct SegCase {
    /// Name for reports and prediction files.
    pub name: String,
    /// `(C, X, Y, Z)`, z fastest.
    pub image: Vec<f32>,
    /// `(X, Y, Z)`, z fastest.
    pub labels: Vec<u16>,
    /// `[C, X, Y, Z]`.
    pub shape: [usize; 4],
    /// Voxel sizes (mm).
    pub spacing: [f64; 3],
    /// Voxel-to-world.
    pub affine: Affine,
}

/// The three splits and the class names.
pub(crate) struct SegData {
    pub classes: Vec<String>,
    pub train: Vec<SegCase>,
    pub val: Vec<SegCase>,
    pub test: Vec<SegCase>,
}

/// A case from a prepared image and a label image on the same grid.
fn case(name: String, image: &Image, label: &Image) -> Result<SegCase> {
    if label.shape[1..] != image.shape[1..] || label.shape[0] != 1 {
        bail!(
            "{name}: label shape {:?} does not match image {:?}",
            label.shape,
            image.shape
        );
    }
    let labels = to_z_fastest(&label.data, label.shape)
        .iter()
        .map(|&v| {
            if v.is_finite() && v >= 0.0 && v <= f32::from(u16::MAX) {
                Ok(v.round() as u16)
            } else {
                bail!("{name}: label value {v} is not a class index")
            }
        })
        .collect::<Result<_>>()?;
    Ok(SegCase {
        name,
        image: to_z_fastest(&image.data, image.shape),
        labels,
        shape: image.shape,
        spacing: image.spacing,
        affine: image.affine,
    })
}

/// Which sample keys make the image (concatenated in this order, as 3DINO
/// concatenates BraTS's `image1`..`image4`) and which is the label map.
pub(crate) struct DatalistKeys {
    pub images: Vec<String>,
    pub label: String,
}

impl DatalistKeys {
    /// From a recipe's `data.keys` and label keys: every non-label key is an
    /// image channel; exactly one label key.
    pub(crate) fn from_plan(keys: &[String], label_keys: &[String]) -> Result<Self> {
        let images: Vec<String> = keys
            .iter()
            .filter(|k| !label_keys.contains(k))
            .cloned()
            .collect();
        let labels: Vec<&String> = keys.iter().filter(|k| label_keys.contains(k)).collect();
        match (images.is_empty(), labels.as_slice()) {
            (false, [label]) => Ok(DatalistKeys {
                images,
                label: (*label).clone(),
            }),
            _ => bail!(
                "task segment needs `data.keys` with image keys and one label key \
                 (e.g. [image, label] or [image1, image2, image3, image4, label]); got {keys:?} \
                 with label keys {label_keys:?}"
            ),
        }
    }
}

/// The channels of `keys` from a prepared sample, concatenated.
fn concat_channels(
    name: &str,
    s: &dino3d_pipeline::exec::Sample,
    keys: &[String],
) -> Result<Image> {
    let get = |k: &str| {
        s.images
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, i)| i)
            .with_context(|| format!("the pipeline dropped `{k}`"))
    };
    let mut out = get(&keys[0])?.clone();
    for k in &keys[1..] {
        let next = get(k)?;
        if next.shape[1..] != out.shape[1..] {
            bail!(
                "{name}: `{k}` has shape {:?}, `{}` {:?}; image channels must share a grid",
                next.shape,
                keys[0],
                out.shape
            );
        }
        out.data.extend_from_slice(&next.data);
        out.shape[0] += next.shape[0];
    }
    Ok(out)
}

/// The datalist's three lists prepared by the recipe's pipeline (image keys
/// concatenated as channels; labels follow with nearest interpolation). An
/// item that fails is reported with its path and skipped.
pub(crate) fn from_datalist(
    pipeline: &Pipeline,
    datalist: &Path,
    classes: usize,
    keys: &DatalistKeys,
    progress: &dyn Progress,
) -> Result<SegData> {
    let text = std::fs::read_to_string(datalist)
        .with_context(|| format!("reading {}", datalist.display()))?;
    let list: Datalist = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a {{training, validation, test}} datalist",
            datalist.display()
        )
    })?;
    let prepare = |items: &[DatalistItem]| -> Vec<SegCase> {
        items
            .iter()
            .filter_map(|item| {
                let Some(image) = item.primary_image() else {
                    progress.note(&format!(
                        "skipping a datalist item without an image: {item:?}"
                    ));
                    return None;
                };
                let Some(label) = item.label.as_str() else {
                    progress.note(&format!("skipping {image}: its label is not a file path"));
                    return None;
                };
                let mut extra: std::collections::BTreeMap<String, serde_json::Value> =
                    item.extra.clone();
                extra.insert(
                    keys.label.clone(),
                    serde_json::Value::String(label.to_string()),
                );
                let entry = ManifestEntry {
                    image: image.to_string(),
                    shape: None,
                    spacing: None,
                    extra: extra.into_iter().collect(),
                };
                let result = pipeline
                    .prepare(&entry, datalist)
                    .map_err(crate::error::TaskError::from)
                    .and_then(|s| {
                        let img = concat_channels(image, &s, &keys.images)?;
                        let lab = concat_channels(image, &s, std::slice::from_ref(&keys.label))?;
                        case(image.to_string(), &img, &lab)
                    });
                match result {
                    Ok(c) => Some(c),
                    Err(e) => {
                        progress.note(&format!("skipping {image}: {}", e.chain()));
                        None
                    }
                }
            })
            .collect()
    };
    let data = SegData {
        classes: (0..classes).map(|k| format!("class {k}")).collect(),
        train: prepare(&list.training),
        val: prepare(&list.validation),
        test: prepare(&list.test),
    };
    if data.train.is_empty() || data.val.is_empty() {
        bail!(
            "{}: no usable training or validation volume",
            datalist.display()
        );
    }
    Ok(data)
}

/// Sub-volume `[lo, hi)` of a case, its affine moved to the new origin.
fn region(c: &SegCase, name: &str, lo: [usize; 3], hi: [usize; 3]) -> SegCase {
    let [ch, x, y, z] = c.shape;
    let ext = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let mut image = Vec::with_capacity(ch * ext.iter().product::<usize>());
    let mut labels = Vec::with_capacity(ext.iter().product::<usize>());
    for ci in 0..ch {
        for xi in lo[0]..hi[0] {
            for yi in lo[1]..hi[1] {
                let at = ((ci * x + xi) * y + yi) * z;
                image.extend_from_slice(&c.image[at + lo[2]..at + hi[2]]);
                if ci == 0 {
                    let at = (xi * y + yi) * z;
                    labels.extend_from_slice(&c.labels[at + lo[2]..at + hi[2]]);
                }
            }
        }
    }
    let mut affine = c.affine;
    for row in affine.iter_mut().take(3) {
        row[3] += (0..3).map(|a| row[a] * lo[a] as f64).sum::<f64>();
    }
    SegCase {
        name: name.to_string(),
        image,
        labels,
        shape: [ch, ext[0], ext[1], ext[2]],
        spacing: c.spacing,
        affine,
    }
}

/// MNI152 2009a T1 with tissue labels (other / grey / white), resampled to
/// `mm`, in three disjoint regions: training = the x < middle half without
/// its last 30% along y, validation = that 30%, test = the other half.
pub(crate) fn mni152_tissue(data: &Path, mm: f64) -> Result<SegData> {
    let lv = crate::probe::data::mni_tissue(data, mm)?;
    let labels: Vec<f32> = lv
        .labels
        .iter()
        .map(|l| f32::from(l.unwrap_or(0)))
        .collect();
    let label = Image {
        data: labels,
        ..lv.image.clone()
    };
    let whole = case("mni152".into(), &lv.image, &label)?;
    let [_, x, y, z] = whole.shape;
    let (mid, cut) = (x / 2, y * 7 / 10);
    Ok(SegData {
        classes: lv.classes,
        train: vec![region(&whole, "mni152_train", [0, 0, 0], [mid, cut, z])],
        val: vec![region(&whole, "mni152_val", [0, cut, 0], [mid, y, z])],
        test: vec![region(&whole, "mni152_test", [mid, 0, 0], [x, y, z])],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_pipeline::nifti::{WriteOptions, affine::IDENTITY, write_volume};
    use dino3d_pipeline::{Volume, VolumeMeta, VoxelData};

    use crate::progress::Silent;
    use dino3d_pipeline::layout::to_x_fastest;

    fn write(path: &Path, data: VoxelData, shape: [usize; 3]) {
        let vol = Volume {
            data,
            shape: [1, shape[0], shape[1], shape[2]],
            spacing: [1.0; 3],
            affine: IDENTITY,
            scaling: None,
            meta: VolumeMeta {
                qform_code: 1,
                sform_code: 1,
                ..VolumeMeta::default()
            },
        };
        write_volume(path, &vol, &WriteOptions::default()).unwrap();
    }

    #[test]
    fn a_datalist_goes_through_the_pipeline_and_bad_items_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let shape = [5, 4, 3];
        let n = 60;
        let image: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let label: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        write(
            &dir.path().join("img.nii.gz"),
            VoxelData::F32(image.into()),
            shape,
        );
        write(
            &dir.path().join("lab.nii.gz"),
            VoxelData::U8(label.clone().into()),
            shape,
        );
        let list = serde_json::json!({
            "training": [{"image": "img.nii.gz", "label": "lab.nii.gz"},
                         {"image": "missing.nii.gz", "label": "lab.nii.gz"}],
            "validation": [{"image": "img.nii.gz", "label": "lab.nii.gz"}],
            "test": [],
        });
        let datalist = dir.path().join("list.json");
        std::fs::write(&datalist, list.to_string()).unwrap();
        let recipe = "task: segment\ndata:\n  keys: [image, label]\npipeline:\n  - name: LoadImage\n  - name: ScaleIntensityRange\n    a_min: 0\n    a_max: 59\n    b_min: -1\n    b_max: 1\n    clip: true\nsegment:\n  datalist: list.json\n  classes: 3\n  pretrained_weights: random\n";
        let (plan, _) = crate::compile_str(recipe, &dir.path().join("r.yaml")).unwrap();
        let keys = DatalistKeys::from_plan(&plan.keys, &plan.label_keys).unwrap();
        let data = from_datalist(&Pipeline::new(&plan), &datalist, 3, &keys, &Silent).unwrap();
        assert_eq!(
            (data.train.len(), data.val.len(), data.test.len()),
            (1, 1, 0)
        );
        let case = &data.train[0];
        assert_eq!(case.shape, [1, 5, 4, 3]);
        // Model layout (z fastest): voxel (x=1, y=2, z=1) is file index
        // (1·4 + 2)·5 + 1 = 31; scaled by the pipeline, its label untouched.
        let at = (4 + 2) * 3 + 1;
        assert_eq!(case.labels[at], (31 % 3) as u16);
        assert!((case.image[at] - (31.0 / 59.0 * 2.0 - 1.0)).abs() < 1e-6);
        // A datalist with nothing usable to train on is an error.
        let empty = dir.path().join("empty.json");
        std::fs::write(
            &empty,
            serde_json::json!({"training": [], "validation": [], "test": []}).to_string(),
        )
        .unwrap();
        assert!(from_datalist(&Pipeline::new(&plan), &empty, 3, &keys, &Silent).is_err());
    }

    #[test]
    fn layouts_round_trip_and_regions_keep_world_positions() {
        let shape = [1, 4, 3, 2];
        let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let m = to_z_fastest(&data, shape);
        // x-fastest index of (x=1, y=2, z=1) is (1*3 + 2)*4 + 1 = 21.
        assert_eq!(m[(3 + 2) * 2 + 1], 21.0);
        let labels: Vec<u16> = m.iter().map(|&v| v as u16).collect();
        let back = to_x_fastest(&labels, [1, 4, 3, 2]);
        assert_eq!(back, (0..24).collect::<Vec<u16>>());
        let mut affine = dino3d_pipeline::nifti::affine::IDENTITY;
        affine[0][0] = 2.0;
        let c = SegCase {
            name: "c".into(),
            image: m.clone(),
            labels,
            shape,
            spacing: [2.0, 1.0, 1.0],
            affine,
        };
        let r = region(&c, "r", [2, 1, 0], [4, 3, 2]);
        assert_eq!(r.shape, [1, 2, 2, 2]);
        // Voxel (0,0,0) of the region is (2,1,0) of the case: x-fastest 1*4+2 = 6.
        assert_eq!(r.image[0], 6.0);
        assert_eq!(r.labels[0], 6);
        assert_eq!(r.affine[0][3], 4.0, "origin moved by 2 voxels of 2 mm");
        assert_eq!(r.affine[1][3], 1.0);
    }

    #[test]
    fn image_keys_are_concatenated_as_channels_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let shape = [3, 2, 2];
        let n = 12;
        for (name, offset) in [("a.nii.gz", 0.0f32), ("b.nii.gz", 100.0)] {
            let v: Vec<f32> = (0..n).map(|i| offset + i as f32).collect();
            write(&dir.path().join(name), VoxelData::F32(v.into()), shape);
        }
        write(
            &dir.path().join("lab.nii.gz"),
            VoxelData::U8(vec![1u8; n].into()),
            shape,
        );
        // 3DINO's BraTS items: no `image`, the channels as image1.., the label.
        let item =
            serde_json::json!({"image2": "b.nii.gz", "image1": "a.nii.gz", "label": "lab.nii.gz"});
        let list = serde_json::json!({"training": [item], "validation": [item], "test": [item]});
        let datalist = dir.path().join("list.json");
        std::fs::write(&datalist, list.to_string()).unwrap();
        let recipe = "task: segment\ndata:\n  keys: [image2, image1, label]\npipeline:\n  - name: LoadImage\nsegment:\n  datalist: list.json\n  classes: 2\n  pretrained_weights: random\n";
        let (plan, _) = crate::compile_str(recipe, &dir.path().join("r.yaml")).unwrap();
        let keys = DatalistKeys::from_plan(&plan.keys, &plan.label_keys).unwrap();
        assert_eq!(keys.images, ["image2", "image1"]);
        assert_eq!(keys.label, "label");
        let data = from_datalist(&Pipeline::new(&plan), &datalist, 2, &keys, &Silent).unwrap();
        let case = &data.test[0];
        assert_eq!(case.shape, [2, 3, 2, 2]);
        // Channel 0 is image2 (b, +100), channel 1 image1 (a); voxel 0 of each.
        assert_eq!(case.image[0], 100.0);
        assert_eq!(case.image[n], 0.0);
        assert_eq!(case.name, "a.nii.gz", "named after its first image key");
        assert!(case.labels.iter().all(|&l| l == 1));
        // A recipe without a label key, or with two, is refused.
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(DatalistKeys::from_plan(&k(&["image"]), &k(&[])).is_err());
        assert!(
            DatalistKeys::from_plan(&k(&["image", "label", "mask"]), &k(&["label", "mask"]))
                .is_err()
        );
    }
}
