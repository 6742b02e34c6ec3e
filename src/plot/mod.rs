//! Pictures of the tasks' curves, with the bundled font as plotters'
//! `sans-serif`.

pub(crate) mod curves;
pub(crate) mod loss;

use std::sync::Once;

use plotters::style::FontStyle;

static FONT: Once = Once::new();

/// Registers the bundled font as plotters' `sans-serif` (once per process).
pub(crate) fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
        if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_err() {
            tracing::warn!("the bundled font could not be loaded; pictures have no text");
        }
    });
}
