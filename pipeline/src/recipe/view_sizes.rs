//! The crop size of each view, known from the recipe alone, and what the
//! batch needs of it: crops of one role are stacked into one tensor (one
//! size) and cut into patches (each side a multiple of the patch size, the
//! token and iBOT mask grid). Checked when the recipe compiles, so
//! `recipe check` rejects what the run would.

use std::path::Path;

use serde_saphyr::Location;

use super::compile::{Step, ViewPlan, ViewRole};
use super::error::RecipeError;

/// The spatial size `steps` give an image of size `size` (`None`: not
/// known before the data is seen).
pub fn output_size(steps: &[Step], mut size: Option<[u64; 3]>) -> Option<[u64; 3]> {
    for step in steps {
        size = step_output(step, size);
    }
    size
}

/// A nested step (`OneOf`, `RandomApply`) may run none, one or all of its
/// children: its size is known only when every outcome agrees.
fn step_output(step: &Step, size: Option<[u64; 3]>) -> Option<[u64; 3]> {
    let own = (step.spec.output_size)(&step.params, size);
    if step.children.is_empty() {
        return own;
    }
    let all = output_size(&step.children, size);
    let each = step
        .children
        .iter()
        .map(|c| step_output(c, size))
        .collect::<Vec<_>>();
    let agree = |s: &Option<[u64; 3]>| *s == size;
    (agree(&own) && agree(&all) && each.iter().all(agree))
        .then_some(size)
        .flatten()
}

/// Where a view's crop size is set in the recipe (for error positions).
#[derive(Debug, Clone)]
pub(super) struct SizeSource {
    /// Index of the view in the compiled plan.
    pub view: usize,
    /// The size parameter's position (or the view's, when no step sets it).
    pub at: Location,
}

/// Crops of one role share one size; every side is a multiple of `patch`.
pub(super) fn check(
    views: &[ViewPlan],
    sources: &[SizeSource],
    patch: usize,
    file: &Path,
    errors: &mut Vec<RecipeError>,
) {
    let mut first_of_role: Vec<(ViewRole, &ViewPlan)> = Vec::new();
    for source in sources {
        let view = &views[source.view];
        let Some(size) = view.crop_size else {
            continue;
        };
        let fmt = |s: [usize; 3]| format!("{}x{}x{}", s[0], s[1], s[2]);
        if patch > 0 && size.iter().any(|s| s % patch != 0) {
            errors.push(RecipeError::at(
                file,
                &source.at,
                format!(
                    "view `{}` makes {} crops: each side must be a multiple of the patch size {patch} (batch.patch_size)",
                    view.name,
                    fmt(size)
                ),
            ));
        }
        match first_of_role.iter().find(|(r, _)| *r == view.role) {
            Some((_, first)) => {
                if let Some(other) = first.crop_size.filter(|s| *s != size) {
                    errors.push(RecipeError::at(
                        file,
                        &source.at,
                        format!(
                            "view `{}` makes {} crops but view `{}` makes {}: crops of one role are stacked into one batch tensor and must share a size",
                            view.name,
                            fmt(size),
                            first.name,
                            fmt(other)
                        ),
                    ));
                }
            }
            None => first_of_role.push((view.role, view)),
        }
    }
}
