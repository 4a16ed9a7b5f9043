//! Plots, each written as SVG and PNG (800x500, white background, text in
//! the embedded DejaVu Sans so PNGs render without system fonts).
//!
//! - Charts: [`line_chart`], [`heatmap`], [`roofline`]; each writes
//!   `<stem>.svg` and `<stem>.png` and returns both paths.
//! - [`plot_run`]: the plots of a run directory (losses, gap to the floor,
//!   expert load, routing by domain) into `<run>/plots/`.
//! - [`plot_sweep`]: the plots of a sweep directory (validation curves, final
//!   loss against every swept key) into `<sweep>/plots/`.

mod axis;
mod canvas;
mod heatmap;
mod legend;
mod line;
mod roofline;
mod run;
mod sweep;

pub use heatmap::heatmap;
pub use line::{line_chart, LineOpts, Series};
pub use roofline::{roofline, RooflinePoint};
pub use run::plot_run;
pub use sweep::plot_sweep;

#[cfg(test)]
mod tests;
