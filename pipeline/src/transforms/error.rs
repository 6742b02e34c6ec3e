//! Why a transform failed on a sample. The caller adds the file and the
//! step ([`crate::Error::Transform`]), so these say only what went wrong.

/// A transform's failure on one sample.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// Nothing above the foreground threshold.
    #[error("no voxel above {threshold} (empty foreground)")]
    EmptyForeground {
        /// The threshold.
        threshold: f32,
    },
    /// 3DINO's axis rule found no two equal spacings (or sizes).
    #[error("no two axes share a spacing (within 0.01) in {values:?}: cannot tell the slice axis")]
    NoSliceAxis {
        /// The three spacings (or sizes).
        values: [f64; 3],
    },
    /// Axis codes that do not name each of L/R, P/A, I/S once.
    #[error("`{text}` is not three axis codes naming each of L/R, P/A, I/S once (e.g. RAS)")]
    AxisCodes {
        /// The codes as given.
        text: String,
    },
    /// An image-only transform applied to a label key.
    #[error("{transform} is for images; labels are not supported")]
    LabelsUnsupported {
        /// The transform's name.
        transform: &'static str,
    },
    /// A key the step transforms is not in the sample.
    #[error("no `{key}` in the sample")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// The manifest entry names no file for a data key.
    #[error("the manifest entry has no `{key}`")]
    NoEntryKey {
        /// The key.
        key: String,
    },
    /// The prefix made no sample at all.
    #[error("produced no sample")]
    NoSample,
    /// The random tail made several samples where the views need one.
    #[error("the pipeline gave {got} samples; views need exactly 1")]
    ViewsNeedOneSample {
        /// Samples made.
        got: usize,
    },
    /// A view's steps made several samples.
    #[error("gave {got} samples; a view must give 1")]
    ViewGaveSamples {
        /// Samples made.
        got: usize,
    },
    /// A step nested in `OneOf` / `RandomApply` failed.
    #[error("{step}: {source}")]
    Nested {
        /// The nested step's name.
        step: String,
        /// Its failure.
        source: Box<TransformError>,
    },
}
