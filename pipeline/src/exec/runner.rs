//! `Pipeline`: a compiled recipe ready to run. [`Pipeline::prepare`] reads an
//! item and runs the deterministic prefix (what the cache persists);
//! [`Pipeline::finish`] runs the random tail and cuts the multi-crop views.
//!
//! Randomness: the prefix draws from `(seed, xxh3(image path as written))`, so
//! a cached random prefix step (3DINO's time frame) is frozen per scan
//! whatever the manifest order; the tail and views draw from
//! `(seed, epoch, item index, crop index, step id)`. Nothing depends on the
//! thread that runs it.

use std::path::Path;

use dino3d_cache::{PlaneNeed, PlaneRect};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::formats::read_volume_with;
use crate::manifest::ManifestEntry;
use crate::nifti::ReadOptions;
use crate::recipe::{Plan, ViewRole};
use crate::transforms::{DrawKey, Image, RandomResizedCrop3d, TransformError, threedino_prefix};

use super::op::{CompiledStep, Context, run_steps};
use super::passes::{self, Applied, Passes};
use super::sample::Sample;

/// A compiled `views:` entry.
#[derive(Debug, Clone)]
pub struct CompiledView {
    /// Its name.
    pub name: String,
    /// Global or local.
    pub role: ViewRole,
    /// Crops per sample.
    pub count: usize,
    /// Its steps.
    pub steps: Vec<CompiledStep>,
}

/// The crops of one sample, in view order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MultiCrop {
    /// Global crops.
    pub global: Vec<Image>,
    /// Local crops.
    pub local: Vec<Image>,
}

/// What the random part produces for one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The tail's samples (no views).
    Samples(Vec<Sample>),
    /// The multi-crop views.
    Crops(MultiCrop),
}

/// A prepared array in the form the cache keeps.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Float voxels.
    Float(Image),
    /// Integer voxels (exact as floats) of type `dtype`, to which `window` is
    /// applied on reading; bit-identical to the float path.
    Int {
        /// Raw voxels.
        raw: Image,
        /// Their stored type.
        dtype: crate::nifti::DType,
        /// The window.
        window: crate::transforms::ScaleIntensityRange,
    },
}

impl Stored {
    /// The float image the prefix produces, in the stored array's memory (a
    /// copy would be a third f32 volume in memory while an item is prepared).
    pub fn into_image(self) -> Image {
        match self {
            Stored::Float(img) => img,
            Stored::Int {
                raw: mut img,
                window,
                ..
            } => {
                crate::transforms::scale_intensity_range(&mut img, &window);
                img
            }
        }
    }
}

/// A recipe compiled for execution.
#[derive(Debug, Clone)]
pub struct Pipeline {
    keys: Vec<String>,
    prefix: Vec<CompiledStep>,
    tail: Vec<CompiledStep>,
    views: Vec<CompiledView>,
    ctx: Context,
    seed: u64,
    prefix_hash: String,
    fused_threedino: Option<u32>,
    passes: Passes,
    applied: Vec<Applied>,
    read: ReadOptions,
}

impl Pipeline {
    /// Builds the pipeline of a validated plan, with every plan pass.
    pub fn new(plan: &Plan) -> Pipeline {
        Pipeline::with_passes(plan, Passes::ALL)
    }

    /// Builds the pipeline of a validated plan with the given passes (the
    /// output is the same whichever run; only speed differs).
    pub fn with_passes(plan: &Plan, on: Passes) -> Pipeline {
        let compiled: Vec<CompiledStep> = plan.steps.iter().map(CompiledStep::new).collect();
        let split = plan.prefix_len.max(1).min(compiled.len());
        let prefix: Vec<CompiledStep> = compiled[..split]
            .iter()
            .filter(|s| s.name != "LoadImage")
            .cloned()
            .collect();
        let mut applied = Vec::new();
        let fused_threedino =
            passes::threedino_prefix(&prefix, &plan.keys).filter(|_| on.fuse_threedino_prefix);
        if fused_threedino.is_some() {
            applied.push(Applied {
                name: "fuse_threedino_prefix",
                detail: format!(
                    "the cached prefix ({} steps) runs as one pass over the stored integers",
                    prefix.len()
                ),
            });
        }
        let mut composed = 0;
        let mut compose = |steps: Vec<CompiledStep>| {
            if !on.compose_flips {
                return steps;
            }
            let (out, n) = passes::compose_flips(&steps);
            composed += n;
            out
        };
        let prefix = compose(prefix);
        let tail = compose(compiled[split..].to_vec());
        let views: Vec<CompiledView> = plan
            .views
            .iter()
            .map(|v| CompiledView {
                name: v.name.clone(),
                role: v.role,
                count: v.count,
                steps: compose(v.steps.iter().map(CompiledStep::new).collect()),
            })
            .collect();
        if composed > 0 {
            applied.push(Applied {
                name: "compose_flips",
                detail: format!("{composed} run(s) of flips and quarter turns, one gather each"),
            });
        }
        let mut pipeline = Pipeline {
            keys: plan.keys.clone(),
            prefix,
            tail,
            views,
            ctx: Context {
                label_keys: plan.label_keys.clone(),
            },
            seed: plan.seed,
            prefix_hash: plan.prefix_hash.clone(),
            fused_threedino,
            passes: on,
            applied,
            read: ReadOptions {
                max_voxels: plan.max_voxels,
                ..ReadOptions::default()
            },
        };
        let cropping: Vec<&str> = pipeline
            .views
            .iter()
            .filter(|v| pipeline.crops_from_shared(v))
            .map(|v| v.name.as_str())
            .collect();
        if !cropping.is_empty() {
            let detail = format!(
                "the first crop of view(s) {} reads the shared prepared sample",
                cropping.join(", ")
            );
            pipeline.applied.push(Applied {
                name: "crop_views_from_shared_sample",
                detail,
            });
        }
        if pipeline.cuts_views_by_plane() {
            pipeline.applied.push(Applied {
                name: "cut_views_by_plane",
                detail: "from the on-disk cache, every view's RandomResizedCrop3d is fed plane by plane as the entry decodes".into(),
            });
        }
        pipeline
    }

    /// The plan passes that apply to this recipe, in order.
    pub fn passes_applied(&self) -> &[Applied] {
        &self.applied
    }

    /// Whether `view`'s first crop cuts from the shared prepared sample.
    fn crops_from_shared(&self, view: &CompiledView) -> bool {
        self.passes.crop_views_from_shared_sample
            && view
                .steps
                .first()
                .is_some_and(|s| s.op.role() == super::op::Role::Crop)
    }

    /// Whether the prefix runs as the fused 3DINO chain.
    pub fn is_fused(&self) -> bool {
        self.fused_threedino.is_some()
    }

    /// Whether the recipe cuts multi-crop views.
    pub fn has_views(&self) -> bool {
        !self.views.is_empty()
    }

    /// Global and local crops per sample.
    pub fn crops_per_sample(&self) -> (usize, usize) {
        let count = |role| {
            self.views
                .iter()
                .filter(|v| v.role == role)
                .map(|v| v.count)
                .sum()
        };
        (count(ViewRole::Global), count(ViewRole::Local))
    }

    /// The 64-bit draw of the fused prefix's time frame for `entry`.
    fn frame_key(&self, entry: &ManifestEntry, id: u32) -> u64 {
        rand::Rng::random(&mut self.prefix_key(entry).for_transform(id).rng())
    }

    /// The draw key of the prefix of `entry`.
    fn prefix_key(&self, entry: &ManifestEntry) -> DrawKey {
        DrawKey {
            seed: self.seed,
            sample: xxhash_rust::xxh3::xxh3_64(entry.image.as_bytes()),
            ..DrawKey::default()
        }
    }

    /// Reads `entry` (every key) and runs the deterministic prefix.
    ///
    /// # Errors
    /// Unreadable files and failing steps, naming the file.
    pub fn prepare(&self, entry: &ManifestEntry, manifest: &Path) -> Result<Sample> {
        let key = self.prefix_key(entry);
        let image_path = entry.resolve(manifest);
        if let Some(id) = self.fused_threedino {
            let vol = read_volume_with(&image_path, &self.read)?;
            let img = threedino_prefix(&vol, self.frame_key(entry, id))
                .map_err(|reason| fused_error(&image_path, reason))?;
            return Ok(Sample::single(img));
        }
        let mut sample = Sample::default();
        for k in &self.keys {
            let path = entry
                .resolve_key(k, manifest)
                .ok_or_else(|| Error::Transform {
                    path: image_path.clone(),
                    step: "LoadImage".into(),
                    source: TransformError::NoEntryKey { key: k.clone() },
                })?;
            let vol = read_volume_with(&path, &self.read)?;
            sample.images.push((k.clone(), Image::from_volume(&vol)));
        }
        self.run(&self.prefix, sample, key, &image_path)
            .and_then(|mut v| {
                v.pop().ok_or_else(|| Error::Transform {
                    path: image_path.clone(),
                    step: "prefix".into(),
                    source: TransformError::NoSample,
                })
            })
    }

    /// [`Pipeline::prepare`] in the smallest faithful form for the cache: the
    /// fused 3DINO prefix on 8/16-bit volumes keeps the integers and the
    /// window; everything else is float.
    ///
    /// # Errors
    /// As [`Pipeline::prepare`].
    pub fn prepare_for_cache(
        &self,
        entry: &ManifestEntry,
        manifest: &Path,
    ) -> Result<Vec<(String, Stored)>> {
        if let Some(id) = self.fused_threedino {
            let image_path = entry.resolve(manifest);
            let vol = read_volume_with(&image_path, &self.read)?;
            let frame = self.frame_key(entry, id);
            // One read of the volume either way: integers when they can be kept.
            let stored = match crate::transforms::threedino_prefix_int(&vol, frame) {
                Some(int) => {
                    let int = int.map_err(|reason| fused_error(&image_path, reason))?;
                    Stored::Int {
                        raw: int.raw,
                        dtype: int.dtype,
                        window: int.window,
                    }
                }
                None => Stored::Float(
                    threedino_prefix(&vol, frame)
                        .map_err(|reason| fused_error(&image_path, reason))?,
                ),
            };
            return Ok(vec![("image".into(), stored)]);
        }
        Ok(self
            .prepare(entry, manifest)?
            .images
            .into_iter()
            .map(|(k, img)| (k, Stored::Float(img)))
            .collect())
    }

    /// The canonical hash of the cached prefix (every step and parameter,
    /// and the seed when a random step is cached): what cache keys are made of.
    pub fn prefix_hash(&self) -> &str {
        &self.prefix_hash
    }

    /// The data keys each item provides.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    fn run(
        &self,
        steps: &[CompiledStep],
        sample: Sample,
        key: DrawKey,
        path: &Path,
    ) -> Result<Vec<Sample>> {
        run_steps(steps, sample, key, &self.ctx).map_err(|(step, source)| Error::Transform {
            path: path.to_path_buf(),
            step,
            source,
        })
    }

    /// Runs the random tail and the views on a prepared sample: item `index`
    /// of the manifest in `epoch`. `path` names the item in errors.
    ///
    /// # Errors
    /// A failing step, naming the file.
    pub fn finish(&self, prepared: &Sample, epoch: u64, index: u64, path: &Path) -> Result<Output> {
        let key = DrawKey {
            seed: self.seed,
            epoch,
            sample: index,
            ..DrawKey::default()
        };
        if self.views.is_empty() {
            return self
                .run(&self.tail, prepared.clone(), key, path)
                .map(Output::Samples);
        }
        let owned;
        let base = if self.tail.is_empty() {
            prepared
        } else {
            let mut out = self.run(&self.tail, prepared.clone(), key, path)?;
            if out.len() != 1 {
                return Err(Error::Transform {
                    path: path.to_path_buf(),
                    step: "views".into(),
                    source: TransformError::ViewsNeedOneSample { got: out.len() },
                });
            }
            owned = out.pop().expect("one sample");
            &owned
        };
        // Every crop of every view, in order; cut in parallel (each has its own
        // draw key, so the result does not depend on scheduling).
        let jobs: Vec<(&CompiledView, u32)> = self
            .views
            .iter()
            .flat_map(|v| std::iter::repeat_n(v, v.count))
            .zip(1u32..)
            .collect();
        let images: Vec<Result<Image>> = jobs
            .par_iter()
            .map(|&(view, crop_index)| {
                self.cut_view(
                    view,
                    base,
                    DrawKey {
                        view: crop_index,
                        ..key
                    },
                    path,
                )
            })
            .collect();
        let mut crops = MultiCrop::default();
        for ((view, _), image) in jobs.iter().zip(images) {
            match view.role {
                ViewRole::Global => crops.global.push(image?),
                ViewRole::Local => crops.local.push(image?),
            }
        }
        Ok(Output::Crops(crops))
    }
}

impl Pipeline {
    fn cut_view(
        &self,
        view: &CompiledView,
        base: &Sample,
        vkey: DrawKey,
        path: &Path,
    ) -> Result<Image> {
        let cropped = if self.crops_from_shared(view) {
            passes::crop_from(&view.steps[0], base, vkey)
        } else {
            None
        };
        let (first, rest) = match cropped {
            Some(cropped) => (cropped, &view.steps[1..]),
            None => (base.clone(), &view.steps[..]),
        };
        self.finish_view(view, rest, first, vkey, path)
    }

    /// Runs the `rest` of `view`'s steps on its first result.
    fn finish_view(
        &self,
        view: &CompiledView,
        rest: &[CompiledStep],
        first: Sample,
        vkey: DrawKey,
        path: &Path,
    ) -> Result<Image> {
        let mut out = self.run(rest, first, vkey, path)?;
        match (out.len(), out.pop()) {
            (1, Some(mut s)) => Ok(s.images.swap_remove(0).1),
            (n, _) => Err(Error::Transform {
                path: path.to_path_buf(),
                step: format!("view {}", view.name),
                source: TransformError::ViewGaveSamples { got: n },
            }),
        }
    }
}

/// The views of one item cut from its prepared image as it arrives one
/// z-plane at a time, for a source that would otherwise have to materialise
/// the whole volume first (the on-disk cache). Only for recipes whose views
/// all start with `RandomResizedCrop3d` on the single key `image` and that
/// have no tail (see [`Pipeline::plane_cutter`]); the crops are exactly those
/// of [`Pipeline::finish`] (same draws, same arithmetic).
pub struct PlaneCutter<'p> {
    pipeline: &'p Pipeline,
    /// The input's spatial shape.
    dims: [usize; 3],
    spacing: [f64; 3],
    affine: crate::nifti::affine::Affine,
    /// Per crop, in view order: its view, its draw key, its resize.
    jobs: Vec<(&'p CompiledView, DrawKey, crate::transforms::PlaneResize)>,
}

impl Pipeline {
    /// Whether [`Pipeline::plane_cutter`] serves this recipe: views, no
    /// tail, the single key `image`, and every view starting with
    /// `RandomResizedCrop3d` on it.
    pub fn cuts_views_by_plane(&self) -> bool {
        self.passes.cut_views_by_plane
            && !self.views.is_empty()
            && self.tail.is_empty()
            && self.keys == ["image"]
            && self.views.iter().all(|v| {
                v.steps.first().is_some_and(|s| {
                    s.op_as::<RandomResizedCrop3d>().is_some()
                        && s.keys.iter().any(|k| k == "image")
                })
            })
    }

    /// A [`PlaneCutter`] for item `index` in `epoch`, whose prepared image
    /// has one channel of spatial shape `dims`, or `None` when this recipe's
    /// views cannot be cut plane by plane (then use [`Pipeline::finish`]).
    pub fn plane_cutter(
        &self,
        dims: [usize; 3],
        spacing: [f64; 3],
        affine: crate::nifti::affine::Affine,
        epoch: u64,
        index: u64,
    ) -> Option<PlaneCutter<'_>> {
        if !self.cuts_views_by_plane() {
            return None;
        }
        let key = DrawKey {
            seed: self.seed,
            epoch,
            sample: index,
            ..DrawKey::default()
        };
        let mut jobs = Vec::new();
        let crops = self
            .views
            .iter()
            .flat_map(|v| std::iter::repeat_n(v, v.count))
            .zip(1u32..);
        for (view, crop_index) in crops {
            let first = &view.steps[0];
            let p = first
                .op_as::<RandomResizedCrop3d>()
                .expect("checked by cuts_views_by_plane");
            let vkey = DrawKey {
                view: crop_index,
                ..key
            };
            // The draw `crop_from` makes: the crop's own stream, box first.
            let mut rng = vkey.for_transform(first.id).rng();
            let (start, extent) = p.draw_box(dims, &mut rng);
            let resize = crate::transforms::PlaneResize::new(
                dims,
                start,
                extent,
                [p.size; 3],
                crate::transforms::ResizeMode::Trilinear,
            );
            jobs.push((view, vkey, resize));
        }
        Some(PlaneCutter {
            pipeline: self,
            dims,
            spacing,
            affine,
            jobs,
        })
    }
}

/// What a [`PlaneCutter`]'s crops read of each input plane
/// ([`PlaneCutter::plane_needs`]).
#[derive(Debug, Clone)]
pub struct PlaneNeeds {
    /// Per plane: the union of the rectangles of the crops reading it.
    rects: Vec<Option<PlaneRect>>,
    /// Row masks (the plane's height long), one per run of planes read by
    /// the same crops.
    masks: Vec<Vec<bool>>,
    /// Per plane: its mask.
    mask_of: Vec<usize>,
}

impl PlaneNeeds {
    /// What the crops read of plane `z` (`None`: no crop reads it).
    pub fn get(&self, z: usize) -> Option<PlaneNeed<'_>> {
        let rect = (*self.rects.get(z)?)?;
        Some(PlaneNeed {
            rect,
            rows: Some(&self.masks[self.mask_of[z]]),
        })
    }
}

impl PlaneCutter<'_> {
    /// What the crops read of each input plane: the union of their
    /// rectangles, and of those rows only the ones their y taps name: a crop
    /// that shrinks skips rows between its taps, which a source computing
    /// each voxel it hands over (the cache's window) then need not compute.
    pub fn plane_needs(&self) -> PlaneNeeds {
        let ny = self.dims[1];
        let mut needs = PlaneNeeds {
            rects: Vec::with_capacity(self.dims[2]),
            masks: Vec::new(),
            mask_of: Vec::with_capacity(self.dims[2]),
        };
        // Which crops read a plane changes only where a crop's z range
        // starts or ends, so consecutive planes share one mask.
        let mut last: Option<Vec<usize>> = None;
        for z in 0..self.dims[2] {
            let readers: Vec<usize> = (0..self.jobs.len())
                .filter(|&j| self.jobs[j].2.wants(z))
                .collect();
            let rect = readers
                .iter()
                .map(|&j| {
                    let (start, end) = self.jobs[j].2.plane_rect();
                    PlaneRect { start, end }
                })
                .reduce(PlaneRect::union);
            if rect.is_some() && last.as_ref() != Some(&readers) {
                let mut mask = vec![false; ny];
                for &j in &readers {
                    for y in self.jobs[j].2.rows_read() {
                        mask[y] = true;
                    }
                }
                needs.masks.push(mask);
                last = Some(readers);
            }
            needs.rects.push(rect);
            needs.mask_of.push(needs.masks.len().saturating_sub(1));
        }
        needs
    }

    /// Takes input plane `z` (`nx · ny` values, x fastest; only the part
    /// [`Self::plane_needs`] names is read); planes must come in increasing `z`.
    pub fn feed(&mut self, z: usize, plane: &[f32]) {
        for (_, _, resize) in &mut self.jobs {
            resize.feed(z, plane);
        }
    }

    /// Finishes the crops (in parallel) and runs the rest of each view.
    ///
    /// # Errors
    /// A failing step, naming `path`.
    ///
    /// # Panics
    /// If a plane some crop needs was never fed.
    pub fn finish(self, path: &Path) -> Result<Output> {
        let PlaneCutter {
            pipeline,
            dims: _,
            spacing,
            affine,
            jobs,
        } = self;
        let roles: Vec<ViewRole> = jobs.iter().map(|(v, _, _)| v.role).collect();
        let images: Vec<Result<Image>> = jobs
            .into_par_iter()
            .map(|(view, vkey, resize)| {
                let first = Sample::single(resize.finish(spacing, affine));
                pipeline.finish_view(view, &view.steps[1..], first, vkey, path)
            })
            .collect();
        let mut crops = MultiCrop::default();
        for (role, image) in roles.into_iter().zip(images) {
            match role {
                ViewRole::Global => crops.global.push(image?),
                ViewRole::Local => crops.local.push(image?),
            }
        }
        Ok(Output::Crops(crops))
    }
}

fn fused_error(path: &Path, source: TransformError) -> Error {
    Error::Transform {
        path: path.to_path_buf(),
        step: "3DINO prefix".into(),
        source,
    }
}
