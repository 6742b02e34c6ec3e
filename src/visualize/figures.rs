//! The pictures: PCA colours and attention heat-maps beside or over the
//! image, as a montage of the middle axial, coronal and sagittal slices
//! (PNG) and as an animation through the axial slices (GIF).
//!
//! Everything is drawn from the prepared image (grey levels of its [-1, 1]
//! intensities) and per-token values, nearest-upsampled, over the part of
//! the prepared box that lies inside the source volume.

use dino3d_pipeline::transforms::Image;

use super::colormap::{Rgb, blend, gray, jet};
use super::render::{Canvas, grid, table};
use super::views::{Frame, Plane, SliceRaster, View, plane};
use dino3d_tasks::visualize::grid::{Placement, TokenGrid};

/// The longest side of a montage panel is at least this many pixels.
const MONTAGE_MIN_PIXELS: usize = 192;
/// The longest side of an animation panel is at least this many pixels.
const ANIMATION_MIN_PIXELS: usize = 128;
/// At most this many frames in an animation (slices are skipped evenly).
const MAX_FRAMES: usize = 96;
/// Opacity of attention heat-maps over the image (3DINO's figure: 0.5).
const HEAT_ALPHA: f32 = 0.5;

/// What the pictures are drawn from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scene<'a> {
    image: &'a Image,
    tokens: &'a TokenGrid,
    /// The part of the prepared box inside the source, in prepared voxels.
    lo: [usize; 3],
    hi: [usize; 3],
}

/// One slice's pixels: grey level and token of each.
struct SlicePixels {
    width: usize,
    height: usize,
    gray: Vec<Rgb>,
    token: Vec<usize>,
}

impl SlicePixels {
    fn image(&self) -> Canvas {
        Canvas::from_colours(self.width, self.height, &self.gray)
    }

    /// Each pixel coloured by `colour(token, grey level)`.
    fn coloured(&self, colour: impl Fn(usize, Rgb) -> Rgb) -> Canvas {
        let colours: Vec<Rgb> = self
            .token
            .iter()
            .zip(&self.gray)
            .map(|(&t, &g)| colour(t, g))
            .collect();
        Canvas::from_colours(self.width, self.height, &colours)
    }
}

impl<'a> Scene<'a> {
    /// The prepared `image`, its `tokens` and where it lies in the source.
    pub(crate) fn new(image: &'a Image, tokens: &'a TokenGrid, place: &Placement) -> Self {
        let (lo, hi) = place.source_box();
        let to_local = |v: [usize; 3]| [0, 1, 2].map(|a| (v[a] as i64 - place.start[a]) as usize);
        Scene {
            image,
            tokens,
            lo: to_local(lo),
            hi: to_local(hi),
        }
    }

    fn frame(&self, min_pixels: usize) -> Frame {
        Frame::new(self.lo, self.hi, self.image.spacing, min_pixels)
    }

    fn plane(&self, view: View) -> Plane {
        plane(view, &self.image.affine)
    }

    fn pixels(&self, r: &SliceRaster) -> SlicePixels {
        SlicePixels {
            width: r.width,
            height: r.height,
            gray: r
                .voxels
                .iter()
                .map(|&[i, j, k]| gray(self.image.at(0, i, j, k)))
                .collect(),
            token: r.voxels.iter().map(|&v| self.tokens.token(v)).collect(),
        }
    }

    /// The middle axial, coronal and sagittal slices.
    fn middle_slices(&self) -> Vec<SlicePixels> {
        let frame = self.frame(MONTAGE_MIN_PIXELS);
        View::ALL
            .iter()
            .map(|&v| {
                let p = self.plane(v);
                self.pixels(&frame.raster(&p, frame.middle(&p)))
            })
            .collect()
    }

    /// The axial slices of the animation.
    fn axial_slices(&self) -> Vec<SlicePixels> {
        let frame = self.frame(ANIMATION_MIN_PIXELS);
        let p = self.plane(View::Axial);
        let (lo, hi) = (self.lo[p.normal], self.hi[p.normal]);
        let step = (hi - lo).div_ceil(MAX_FRAMES).max(1);
        (lo..hi)
            .step_by(step)
            .map(|s| self.pixels(&frame.raster(&p, s)))
            .collect()
    }
}

/// The PCA montage: rows of the middle axial, coronal and sagittal slices,
/// the image beside the PCA colours (`rgb` per token).
pub(crate) fn pca_montage(scene: &Scene, rgb: &[Rgb]) -> Canvas {
    let rows: Vec<Vec<Canvas>> = scene
        .middle_slices()
        .iter()
        .map(|s| vec![s.image(), s.coloured(|t, _| rgb[t])])
        .collect();
    table(&rows)
}

/// The PCA animation: image beside the PCA colours, through axial slices.
pub(crate) fn pca_frames(scene: &Scene, rgb: &[Rgb]) -> Vec<Canvas> {
    scene
        .axial_slices()
        .iter()
        .map(|s| table(&[vec![s.image(), s.coloured(|t, _| rgb[t])]]))
        .collect()
}

/// Attention `N × heads` as jet colours, each head rescaled to [0, 1]
/// (min-max over the tokens).
pub(crate) fn heat_colours(attention: &[f32], heads: usize) -> Vec<[f32; 3]> {
    let mut out = vec![[0.0; 3]; attention.len()];
    for h in 0..heads {
        let col = attention.iter().skip(h).step_by(heads);
        let (lo, hi) = col.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
        let span = if hi > lo { hi - lo } else { 1.0 };
        for (o, &v) in out
            .iter_mut()
            .skip(h)
            .step_by(heads)
            .zip(attention.iter().skip(h).step_by(heads))
        {
            *o = jet((v - lo) / span);
        }
    }
    out
}

/// One head's montage: rows of the middle slices, the image beside the
/// heat-map over it. `heat` is [`heat_colours`]' output.
pub(crate) fn head_montage(scene: &Scene, heat: &[[f32; 3]], heads: usize, head: usize) -> Canvas {
    let rows: Vec<Vec<Canvas>> = scene
        .middle_slices()
        .iter()
        .map(|s| {
            vec![
                s.image(),
                s.coloured(|t, g| blend(g, heat[t * heads + head], HEAT_ALPHA)),
            ]
        })
        .collect();
    table(&rows)
}

/// The attention animation through axial slices: the image and every head's
/// heat-map in a grid.
pub(crate) fn heads_frames(scene: &Scene, heat: &[[f32; 3]], heads: usize) -> Vec<Canvas> {
    let cols = ((heads + 1) as f64).sqrt().ceil() as usize;
    scene
        .axial_slices()
        .iter()
        .map(|s| {
            let panels: Vec<Canvas> = std::iter::once(s.image())
                .chain(
                    (0..heads)
                        .map(|h| s.coloured(|t, g| blend(g, heat[t * heads + h], HEAT_ALPHA))),
                )
                .collect();
            grid(&panels, cols)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dino3d_pipeline::nifti::affine::IDENTITY;

    fn scene_parts() -> (Image, TokenGrid, Placement) {
        // 32 × 16 × 16 prepared image, dark left half and bright right half;
        // 2 × 1 × 1 tokens; the box starts 8 voxels before the source in x.
        let mut data = vec![-1.0f32; 32 * 16 * 16];
        for (n, v) in data.iter_mut().enumerate() {
            if n % 32 >= 16 {
                *v = 1.0;
            }
        }
        let image = Image {
            data,
            shape: [1, 32, 16, 16],
            spacing: [1.0; 3],
            affine: IDENTITY,
        };
        let tokens = TokenGrid {
            grid: [2, 1, 1],
            extent: [32, 16, 16],
        };
        let place = Placement {
            start: [-8, 0, 0],
            extent: [32, 16, 16],
            source: [40, 16, 16],
        };
        (image, tokens, place)
    }

    #[test]
    fn montages_show_the_image_beside_token_colours() {
        let (image, tokens, place) = scene_parts();
        let scene = Scene::new(&image, &tokens, &place);
        let rgb = [[255, 0, 0], [0, 0, 255]];
        let m = pca_montage(&scene, &rgb);
        // Axial row: 24 voxels of x (the part inside the source) scaled up to
        // at least 192 pixels, twice (image, colours), with a gap.
        let panel = 192;
        assert_eq!(m.width, 2 * panel + 4);
        // Image panel: x < 16 prepared is dark (source x < 8), then bright.
        assert_eq!(m.at(0, 0), [0, 0, 0]);
        assert_eq!(m.at(panel - 1, 0), [255, 255, 255]);
        // Colour panel: token 0 (prepared x < 16) red, token 1 blue.
        assert_eq!(m.at(panel + 4, 0), [255, 0, 0]);
        assert_eq!(m.at(2 * panel + 3, 0), [0, 0, 255]);
        let frames = pca_frames(&scene, &rgb);
        assert_eq!(frames.len(), 16, "one frame per axial slice");
        assert_eq!(frames[0].width, 2 * 128 + 4, "animation panels are smaller");
    }

    #[test]
    fn heads_are_normalised_and_drawn_in_a_grid() {
        let heat = heat_colours(&[0.1, 5.0, 0.3, 5.0], 2);
        assert_eq!(heat, vec![jet(0.0), jet(0.0), jet(1.0), jet(0.0)]);
        let (image, tokens, place) = scene_parts();
        let scene = Scene::new(&image, &tokens, &place);
        let m = head_montage(&scene, &heat, 2, 0);
        // Token 0 of head 0 is 0 (jet dark blue) over a black voxel.
        assert_eq!(m.at(196, 0), blend([0, 0, 0], jet(0.0), 0.5));
        let frames = heads_frames(&scene, &heat, 2);
        assert_eq!(frames.len(), 16);
        // Image + 2 heads in a 2 × 2 grid of 128-pixel panels.
        assert_eq!(frames[0].width, 2 * 128 + 4);
    }
}
