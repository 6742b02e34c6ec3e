//! Raster pictures: an RGB canvas, side-by-side and grid layouts, and the
//! PNG and animated GIF encoders (the `png` and `gif` crates).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, bail};

use super::colormap::Rgb;

/// Space between panels, in pixels.
const GAP: usize = 4;
/// The background between panels.
const BACKGROUND: Rgb = [255, 255, 255];

/// An 8-bit RGB picture, row-major from the top left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Canvas {
    /// Pixels per row.
    pub(crate) width: usize,
    /// Rows.
    pub(crate) height: usize,
    /// `width × height` RGB triples.
    pub(crate) pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `colour`.
    pub(crate) fn filled(width: usize, height: usize, colour: Rgb) -> Self {
        Canvas {
            width,
            height,
            pixels: colour.repeat(width * height),
        }
    }

    /// A canvas from one colour per pixel.
    pub(crate) fn from_colours(width: usize, height: usize, colours: &[Rgb]) -> Self {
        assert_eq!(colours.len(), width * height, "one colour per pixel");
        Canvas {
            width,
            height,
            pixels: colours.concat(),
        }
    }

    /// The colour at `(x, y)`.
    #[cfg(test)]
    pub(crate) fn at(&self, x: usize, y: usize) -> Rgb {
        let i = 3 * (y * self.width + x);
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    fn paste(&mut self, other: &Canvas, x0: usize, y0: usize) {
        for y in 0..other.height {
            let src = &other.pixels[3 * y * other.width..3 * (y + 1) * other.width];
            let at = 3 * ((y0 + y) * self.width + x0);
            self.pixels[at..at + src.len()].copy_from_slice(src);
        }
    }
}

/// `panels` in a grid of `cols` columns, row by row, each cell as large as
/// the largest panel (panels sit at their cell's top left), `GAP` apart.
pub(crate) fn grid(panels: &[Canvas], cols: usize) -> Canvas {
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols);
    let cell_w = panels.iter().map(|p| p.width).max().unwrap_or(0);
    let cell_h = panels.iter().map(|p| p.height).max().unwrap_or(0);
    let width = cols * cell_w + (cols - 1) * GAP;
    let height = rows * cell_h + rows.saturating_sub(1) * GAP;
    let mut out = Canvas::filled(width, height, BACKGROUND);
    for (i, p) in panels.iter().enumerate() {
        out.paste(p, (i % cols) * (cell_w + GAP), (i / cols) * (cell_h + GAP));
    }
    out
}

/// Rows of panels stacked, each row laid out left to right; cells are sized
/// per column and per row, `GAP` apart.
pub(crate) fn table(rows: &[Vec<Canvas>]) -> Canvas {
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let col_w: Vec<usize> = (0..ncols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|p| p.width)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let row_h: Vec<usize> = rows
        .iter()
        .map(|r| r.iter().map(|p| p.height).max().unwrap_or(0))
        .collect();
    let width = col_w.iter().sum::<usize>() + ncols.saturating_sub(1) * GAP;
    let height = row_h.iter().sum::<usize>() + rows.len().saturating_sub(1) * GAP;
    let mut out = Canvas::filled(width, height, BACKGROUND);
    let mut y = 0;
    for (r, row) in rows.iter().enumerate() {
        let mut x = 0;
        for (c, p) in row.iter().enumerate() {
            out.paste(p, x, y);
            x += col_w[c] + GAP;
        }
        y += row_h[r] + GAP;
    }
    out
}

/// Writes `canvas` as an 8-bit RGB PNG.
///
/// # Errors
/// I/O and encoder failures, naming the file.
pub(crate) fn write_png(path: &Path, canvas: &Canvas) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(
        BufWriter::new(file),
        canvas.width as u32,
        canvas.height as u32,
    );
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc
        .write_header()
        .with_context(|| format!("writing {}", path.display()))?;
    w.write_image_data(&canvas.pixels)
        .and_then(|()| w.finish())
        .with_context(|| format!("writing {}", path.display()))
}

/// Pixels of the frames sampled to learn the GIF's palette.
const PALETTE_SAMPLE: usize = 1 << 18;

/// Writes `frames` (all the same size) as a looping animated GIF, each shown
/// for `delay_cs` hundredths of a second. All frames share one palette (see
/// [`Palette`]), so colours do not flicker from frame to frame.
///
/// # Errors
/// Frames of different or oversized dimensions, I/O and encoder failures.
pub(crate) fn write_gif(path: &Path, frames: &[Canvas], delay_cs: u16) -> anyhow::Result<()> {
    let Some(first) = frames.first() else {
        bail!("no frames for {}", path.display());
    };
    let (w, h) = (first.width, first.height);
    if frames.iter().any(|f| (f.width, f.height) != (w, h)) {
        bail!("GIF frames differ in size");
    }
    let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
        bail!("{w} x {h} is too large for a GIF");
    };
    let palette = Palette::learn(frames);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let ctx = || format!("writing {}", path.display());
    let mut enc =
        gif::Encoder::new(BufWriter::new(file), w16, h16, &palette.colours()).with_context(ctx)?;
    enc.set_repeat(gif::Repeat::Infinite).with_context(ctx)?;
    for f in frames {
        let indices: Vec<u8> = f
            .pixels
            .chunks_exact(3)
            .map(|p| palette.index_of([p[0], p[1], p[2]]))
            .collect();
        let frame = gif::Frame {
            width: w16,
            height: h16,
            delay: delay_cs,
            buffer: indices.into(),
            ..gif::Frame::default()
        };
        enc.write_frame(&frame).with_context(ctx)?;
    }
    Ok(())
}

/// The colours of an animation: exact when the frames use at most 256,
/// otherwise 256 learnt by NeuQuant from a sample of every frame.
enum Palette {
    Exact(HashMap<Rgb, u8>),
    Learnt(color_quant::NeuQuant),
}

impl Palette {
    fn learn(frames: &[Canvas]) -> Palette {
        let per_frame = frames[0].width * frames[0].height;
        let total = frames.len() * per_frame;
        let stride = total.div_ceil(PALETTE_SAMPLE).max(1);
        let pixel = |n: usize| {
            let p = &frames[n / per_frame].pixels[3 * (n % per_frame)..][..3];
            [p[0], p[1], p[2]]
        };
        let exact = |step: usize| {
            let mut seen = HashMap::new();
            for n in (0..total).step_by(step) {
                let next = seen.len();
                seen.entry(pixel(n)).or_insert(next as u8);
                if seen.len() > 256 {
                    return None;
                }
            }
            Some(seen)
        };
        // A sample with few colours: check every pixel before trusting it.
        if let Some(seen) = exact(stride).and_then(|_| exact(1)) {
            return Palette::Exact(seen);
        }
        let mut sample = Vec::with_capacity(4 * (total / stride + 1));
        for n in (0..total).step_by(stride) {
            sample.extend_from_slice(&pixel(n));
            sample.push(255);
        }
        // NeuQuant learns from every `factor`-th pixel: all of a small sample.
        let factor = (sample.len() / 4 / 25_000).clamp(1, 10) as i32;
        Palette::Learnt(color_quant::NeuQuant::new(factor, 256, &sample))
    }

    /// The palette as RGB triples.
    fn colours(&self) -> Vec<u8> {
        match self {
            Palette::Exact(map) => {
                let mut out = vec![0; 3 * map.len()];
                for (c, &i) in map {
                    out[3 * i as usize..][..3].copy_from_slice(c);
                }
                out
            }
            Palette::Learnt(q) => q.color_map_rgb(),
        }
    }

    fn index_of(&self, c: Rgb) -> u8 {
        match self {
            Palette::Exact(map) => map[&c],
            Palette::Learnt(q) => q.index_of(&[c[0], c[1], c[2], 255]) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_place_panels_with_gaps() {
        let red = Canvas::filled(2, 3, [255, 0, 0]);
        let blue = Canvas::filled(4, 1, [0, 0, 255]);
        let g = grid(&[red.clone(), blue.clone(), red.clone()], 2);
        assert_eq!((g.width, g.height), (4 + GAP + 4, 3 + GAP + 3));
        assert_eq!(g.at(0, 0), [255, 0, 0]);
        assert_eq!(g.at(4 + GAP, 0), [0, 0, 255]);
        assert_eq!(g.at(4 + GAP, 1), BACKGROUND);
        assert_eq!(g.at(1, 3 + GAP + 2), [255, 0, 0]);
        let t = table(&[vec![red.clone(), blue.clone()], vec![blue.clone()]]);
        assert_eq!((t.width, t.height), (4 + GAP + 4, 3 + GAP + 1));
        assert_eq!(t.at(4 + GAP + 3, 0), [0, 0, 255]);
        assert_eq!(t.at(3, 3 + GAP), [0, 0, 255]);
    }

    /// Every frame's RGBA pixels (each frame shown for 5 hundredths).
    fn decode_gif(path: &Path) -> Vec<Vec<u8>> {
        let mut opts = gif::DecodeOptions::new();
        opts.set_color_output(gif::ColorOutput::RGBA);
        let mut dec = opts.read_info(File::open(path).unwrap()).unwrap();
        let mut frames = Vec::new();
        while let Some(f) = dec.read_next_frame().unwrap() {
            assert_eq!(f.delay, 5);
            frames.push(f.buffer.to_vec());
        }
        frames
    }

    #[test]
    fn png_and_gif_files_have_their_signatures_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let c = Canvas::from_colours(2, 1, &[[1, 2, 3], [250, 0, 9]]);
        let png_path = dir.path().join("a.png");
        write_png(&png_path, &c).unwrap();
        let bytes = std::fs::read(&png_path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(
            &bytes[16..24],
            &[0, 0, 0, 2, 0, 0, 0, 1],
            "IHDR width, height"
        );
        let gif_path = dir.path().join("a.gif");
        write_gif(&gif_path, &[c.clone(), Canvas::filled(2, 1, [0; 3])], 5).unwrap();
        let bytes = std::fs::read(&gif_path).unwrap();
        assert_eq!(&bytes[..6], b"GIF89a");
        assert_eq!(&bytes[6..10], &[2, 0, 1, 0], "logical screen width, height");
        // Decoded: two frames, exact colours (fewer than 256: exact palette).
        let frames = decode_gif(&gif_path);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], vec![1, 2, 3, 255, 250, 0, 9, 255]);
        assert_eq!(frames[1], vec![0, 0, 0, 255, 0, 0, 0, 255]);
        // More than 256 colours (a 64 x 64 ramp): a learnt palette, still close.
        let colours: Vec<Rgb> = (0..64 * 64)
            .map(|i| [(i % 64 * 4) as u8, (i / 64 * 4) as u8, 128])
            .collect();
        write_gif(&gif_path, &[Canvas::from_colours(64, 64, &colours)], 5).unwrap();
        let frame = &decode_gif(&gif_path)[0];
        let errors: Vec<u8> = (0..64 * 64)
            .flat_map(|i| (0..3).map(move |c| (i, c)))
            .map(|(i, c)| frame[4 * i + c].abs_diff(colours[i][c]))
            .collect();
        let mean = errors.iter().map(|&e| f64::from(e)).sum::<f64>() / errors.len() as f64;
        let worst = errors.iter().max().unwrap();
        assert!(mean <= 6.0 && *worst <= 48, "mean {mean}, worst {worst}");
        assert!(write_gif(&gif_path, &[c, Canvas::filled(3, 1, [0; 3])], 5).is_err());
    }
}
