//! What every chart shares: the embedded font, the canvas size, the colors,
//! tick formatting, and rendering one figure to both SVG and PNG.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};

use crate::{Error, Result};

/// Canvas size of every chart (pixels; the SVG uses the same user units).
pub(crate) const SIZE: (u32, u32) = (800, 500);

/// The only font family charts use: DejaVu Sans, embedded (PNG text must
/// render on machines without system fonts).
pub(crate) const FONT: &str = "sans-serif";

/// Result of drawing onto a backend `DB`.
pub(crate) type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A chart that can be drawn on any backend (SVG text or PNG pixels).
pub(crate) trait Figure {
    /// Draw onto `root`, already filled white.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// Register the embedded DejaVu Sans as "sans-serif", once per process.
pub(crate) fn ensure_font() {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        if plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_err() {
            panic!("the embedded DejaVu Sans font does not parse; the dejavu crate is broken");
        }
    });
}

/// `dir/name.ext` for a stem `dir/name` (the stem may itself contain dots,
/// e.g. `loss_vs_model.aux_loss_coef`, so `with_extension` would be wrong).
fn with_suffix(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn drawing_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path, std::io::Error::other(format!("drawing failed: {e}")))
}

/// Draw `fig` into `<stem>.svg` and `<stem>.png` (creating the parent
/// directory) and return both paths.
pub(crate) fn render(stem: &Path, fig: &impl Figure) -> Result<Vec<PathBuf>> {
    ensure_font();
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let (svg, png) = (with_suffix(stem, "svg"), with_suffix(stem, "png"));

    // The SVG is drawn into memory so that a failed write is a plain I/O error.
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| drawing_error(&svg, e))?;
        fig.draw(&root).map_err(|e| drawing_error(&svg, e))?;
        root.present().map_err(|e| drawing_error(&svg, e))?;
    }
    std::fs::write(&svg, text).map_err(|e| Error::io(&svg, e))?;

    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| drawing_error(&png, e))?;
        fig.draw(&root).map_err(|e| drawing_error(&png, e))?;
        root.present().map_err(|e| drawing_error(&png, e))?;
    }
    Ok(vec![svg, png])
}

/// matplotlib's "tab10": distinct and readable on white, unlike the yellows
/// early in Palette99 (used past the tenth series).
const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The color of series `i`.
pub(crate) fn series_color(i: usize) -> RGBColor {
    match TAB10.get(i) {
        Some(&c) => c,
        None => {
            let (r, g, b) = Palette99::pick(i - TAB10.len()).rgb();
            RGBColor(r, g, b)
        }
    }
}

/// The color of reference line `i` (dark greys first: a floor should not
/// look like one more series).
pub(crate) fn reference_color(i: usize) -> RGBColor {
    match i {
        0 => RGBColor(40, 40, 40),
        1 => RGBColor(130, 130, 130),
        _ => series_color(i),
    }
}

/// A short tick label: up to four significant digits, trailing zeros
/// dropped, exponent notation outside [1e-3, 1e5).
pub(crate) fn fmt_tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { v.to_string() };
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}").replace(".0e", "e");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A tick label with an SI prefix (`2.5G`), for FLOP/s and bytes/s axes.
pub(crate) fn fmt_si(v: f64) -> String {
    const PREFIXES: [(f64, &str); 5] = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    match PREFIXES.iter().find(|(scale, _)| v.abs() >= *scale) {
        Some((scale, p)) => format!("{}{p}", fmt_tick(v / scale)),
        None => fmt_tick(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(fmt_tick(0.0), "0");
        assert_eq!(fmt_tick(0.30000000000000004), "0.3");
        assert_eq!(fmt_tick(1.25), "1.25");
        assert_eq!(fmt_tick(800.0), "800");
        assert_eq!(fmt_tick(0.001), "0.001");
        assert_eq!(fmt_tick(1e5), "1e5");
        assert_eq!(fmt_tick(2.5e-4), "2.5e-4");
        assert_eq!(fmt_si(2.5e9), "2.5G");
        assert_eq!(fmt_si(1e12), "1T");
        assert_eq!(fmt_si(12.0), "12");
    }

    #[test]
    fn png_text_renders_with_the_embedded_font() {
        ensure_font();
        let (w, h) = (120u32, 40u32);
        let mut pixels = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
            root.draw_text("loss", &TextStyle::from((FONT, 24).into_font()).color(&BLACK), (5, 5)).unwrap();
            root.present().unwrap();
        }
        let inked = pixels.chunks(3).filter(|p| p[0] < 128).count();
        // "loss" at 24 px covers a few hundred pixels; a missing font draws none.
        assert!(inked > 100, "only {inked} dark pixels");
    }

    #[test]
    fn dotted_stems_keep_their_dots() {
        let p = with_suffix(Path::new("plots/loss_vs_model.aux_loss_coef"), "png");
        assert_eq!(p, Path::new("plots/loss_vs_model.aux_loss_coef.png"));
    }
}
