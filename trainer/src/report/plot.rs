//! Validation-loss plots: one curve per algorithm against steps, bytes sent per worker or
//! wall-clock seconds, written as SVG (text stays text, for pages and papers) and PNG (for
//! a quick look), with `plotters`.
//!
//! Fonts: no system font library is linked. The PNG's text is rendered with a TrueType
//! font read at run time from `MERIDIAN_PLOT_FONT` when that is set (then only from
//! there), else from a few well-known paths (DejaVu Sans, Liberation Sans, Arial). With no
//! font the PNG is still written, without any text, and a warning is logged once. The SVG
//! always carries its text: its viewer renders it, and the layout here never measures
//! text (the legend's width is estimated from the label lengths).
//!
//! Choices a caller should know:
//! - Points with a non-finite loss are skipped; so are points with a non-finite x.
//! - Bytes use a log x axis, since the algorithms' curves span orders of magnitude; points
//!   at zero bytes (the evaluation before anything was sent) cannot sit on it and are
//!   dropped. A curve left with no point stays in the legend, marked "(no data)".
//! - An axis whose values are all equal is padded around that value.
//! - When no curve has a point to draw (no curves, or all points dropped), nothing is
//!   written and the error says so: an empty picture would pass for a result.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontTransform};
use serde::{Deserialize, Serialize};

/// One point of a validation-loss curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Optimizer steps taken (inner steps, per worker).
    pub step: u64,
    /// Training tokens seen, all workers together.
    pub tokens: u64,
    /// Bytes each worker has sent so far.
    pub bytes_per_worker: f64,
    /// Wall-clock seconds since training started.
    pub seconds: f64,
    /// Loss on the held-out set.
    pub val_loss: f64,
}

/// One labelled curve (an algorithm's run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// Legend text.
    pub label: String,
    /// Points in the order they were measured.
    pub points: Vec<CurvePoint>,
}

/// Which quantity goes on the x axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Optimizer steps, linear.
    Steps,
    /// Bytes sent per worker, logarithmic.
    BytesPerWorker,
    /// Wall-clock seconds, linear.
    Seconds,
    /// Seconds of a simulated run's virtual clock (`CurvePoint::seconds`), linear.
    SimulatedSeconds,
}

/// Picture size in pixels (the SVG's view box too).
pub const SIZE: (u32, u32) = (960, 600);

/// The family name the loaded font is registered under.
const FONT: &str = "sans-serif";

/// Tableau 10: distinguishable, and readable by most colour-blind viewers.
const PALETTE: [RGBColor; 10] = [
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

/// Curves with at most this many points get a marker on each (a single point is otherwise
/// invisible); longer ones are plain lines.
const MARKERS_UP_TO: usize = 40;

impl XAxis {
    fn description(self) -> &'static str {
        match self {
            XAxis::Steps => "step",
            XAxis::BytesPerWorker => "bytes sent per worker (log scale)",
            XAxis::Seconds => "wall-clock seconds",
            XAxis::SimulatedSeconds => "simulated seconds",
        }
    }

    /// Where `p` sits on the axis (log10 of the bytes for the log axis), or `None` when it
    /// cannot be drawn.
    fn position(self, p: &CurvePoint) -> Option<f64> {
        let x = match self {
            XAxis::Steps => p.step as f64,
            XAxis::Seconds | XAxis::SimulatedSeconds => p.seconds,
            XAxis::BytesPerWorker if p.bytes_per_worker > 0.0 => p.bytes_per_worker.log10(),
            XAxis::BytesPerWorker => return None,
        };
        x.is_finite().then_some(x)
    }

    fn tick(self, v: f64) -> String {
        match self {
            XAxis::BytesPerWorker => human_bytes(10f64.powf(v)),
            XAxis::Steps | XAxis::Seconds | XAxis::SimulatedSeconds => number(v),
        }
    }
}

/// A tick value without float noise: integers as integers, else three decimals at most.
fn number(v: f64) -> String {
    if v.fract() == 0.0 || v.abs() >= 1e5 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Bytes in decimal units with three significant digits: `1 kB`, `3.16 MB`.
fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = b;
    let mut unit = 0;
    // The tolerance keeps 10^3 computed as 999.99999… from printing as "1000 B".
    while value >= 1000.0 * (1.0 - 1e-6) && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value >= 99.95 {
        0
    } else if value >= 9.995 {
        1
    } else {
        2
    };
    let s = format!("{value:.digits$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    format!("{s} {}", UNITS[unit])
}

/// `[lo, hi]` widened by 4 % each side, or around the value when `lo == hi`.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let span = hi - lo;
    let margin = if span > 0.0 {
        span * 0.04
    } else if lo == 0.0 {
        1.0
    } else {
        lo.abs() * 0.05
    };
    (lo - margin, hi + margin)
}

/// Every curve's drawable points, (x position, loss).
fn drawable(x: XAxis, curves: &[Curve]) -> Vec<Vec<(f64, f64)>> {
    curves
        .iter()
        .map(|c| {
            c.points
                .iter()
                .filter(|p| p.val_loss.is_finite())
                .filter_map(|p| Some((x.position(p)?, p.val_loss)))
                .collect()
        })
        .collect()
}

/// The padded range of one coordinate over all points.
fn range(series: &[Vec<(f64, f64)>], pick: impl Fn(&(f64, f64)) -> f64) -> Result<(f64, f64)> {
    let (lo, hi) = series
        .iter()
        .flatten()
        .map(pick)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = padded(lo, hi);
    if !(lo.is_finite() && hi.is_finite()) {
        bail!("the values span more than a plot axis can hold ({lo} to {hi})");
    }
    Ok((lo, hi))
}

/// Well-known locations of a sans-serif TrueType font on Linux, macOS and Windows.
const FONT_PATHS: [&str; 8] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Loads and registers a font the first time it is asked; whether one is available.
fn font_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("MERIDIAN_PLOT_FONT") {
            Some(path) => vec![PathBuf::from(path)],
            None => FONT_PATHS.iter().map(PathBuf::from).collect(),
        };
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the life of the process; this runs once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!(
            "no TrueType font found (tried {}); PNG plots are drawn without text. Set \
             MERIDIAN_PLOT_FONT to a .ttf file to add it; the SVG plots have their text",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        false
    })
}

/// Writes `{stem}.svg` and `{stem}.png` in `dir`: validation loss against `x` for every
/// curve, one colour each, with a legend, axis labels and a title. `dir` must exist; each
/// file is replaced atomically (the SVG first, so a failure writing the PNG can leave the
/// new SVG next to an older PNG). Returns the paths written. See the module doc for what
/// is dropped and when nothing is written.
pub fn write_loss_plot(
    dir: &Path,
    stem: &str,
    title: &str,
    x: XAxis,
    curves: &[Curve],
) -> Result<Vec<PathBuf>> {
    if stem.is_empty() || stem.contains(['/', '\\']) {
        bail!("plot name {stem:?} must be a plain file name");
    }
    let series = drawable(x, curves);
    if series.iter().all(Vec::is_empty) {
        bail!(
            "nothing to plot for {title:?}: {} curve(s) without a point that has a finite \
             loss{}",
            curves.len(),
            if x == XAxis::BytesPerWorker { " and a positive byte count" } else { "" }
        );
    }
    let plot = Plot { title, x, curves, series };
    let svg = dir.join(format!("{stem}.svg"));
    plot.write_svg(&svg)?;
    let png = dir.join(format!("{stem}.png"));
    plot.write_png(&png, font_loaded())?;
    Ok(vec![svg, png])
}

/// Everything one picture needs, drawable on any backend.
struct Plot<'a> {
    title: &'a str,
    x: XAxis,
    curves: &'a [Curve],
    series: Vec<Vec<(f64, f64)>>,
}

impl Plot<'_> {
    fn write_svg(&self, path: &Path) -> Result<()> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            self.draw(&root, true)?;
            root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        crate::atomic_write::write(path, svg.as_bytes())
    }

    /// `text`: whether a font is registered, so that text can be rasterized.
    fn write_png(&self, path: &Path, text: bool) -> Result<()> {
        crate::atomic_write::replace_with(path, |temp| {
            let root = BitMapBackend::new(temp, SIZE).into_drawing_area();
            self.draw(&root, text)?;
            root.present().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
        })
    }

    /// Draws the whole picture. Text is drawn in a transparent colour when `text` is false:
    /// backends skip it before asking for a font, and the layout stays the same.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, text: bool) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let fail = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e}");
        let ink: RGBAColor = if text { BLACK.to_rgba() } else { TRANSPARENT };
        let style = |size: u32| TextStyle::from((FONT, size)).color(&ink);
        root.fill(&WHITE).map_err(fail)?;

        let (x0, x1) = range(&self.series, |p| p.0)?;
        let (y0, y1) = range(&self.series, |p| p.1)?;
        let mut chart = ChartBuilder::on(root)
            .margin_top(48)
            .margin_right(24)
            .margin_left(8)
            .margin_bottom(8)
            .x_label_area_size(52)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(fail)?;
        let tick = |v: &f64| self.x.tick(*v);
        let x_labels = match self.x {
            // About one label per decade, so that they fall on powers of ten rather than
            // on half decades (3.16 kB).
            XAxis::BytesPerWorker => ((x1 - x0).ceil() as usize + 1).clamp(3, 12),
            XAxis::Steps | XAxis::Seconds | XAxis::SimulatedSeconds => 8,
        };
        chart
            .configure_mesh()
            .x_labels(x_labels)
            .y_labels(8)
            .x_label_formatter(&tick)
            .y_label_formatter(&|v| number(*v))
            .label_style(style(14))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(220, 220, 220))
            .draw()
            .map_err(fail)?;

        for (i, points) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .map_err(fail)?;
            if points.len() <= MARKERS_UP_TO {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(fail)?;
            }
        }

        // Title, axis descriptions and legend are placed in pixels, without measuring text.
        let (w, h) = root.dim_in_pixel();
        let (px, py) = chart.plotting_area().get_pixel_range();
        let centred = |size: u32, v: VPos| style(size).pos(Pos::new(HPos::Center, v));
        root.draw(&Text::new(self.title.to_owned(), (w as i32 / 2, 14), centred(22, VPos::Top)))
            .map_err(fail)?;
        let x_desc = Text::new(
            self.x.description(),
            ((px.start + px.end) / 2, h as i32 - 10),
            centred(16, VPos::Bottom),
        );
        root.draw(&x_desc).map_err(fail)?;
        let y_desc = Text::new(
            "validation loss",
            (12, (py.start + py.end) / 2),
            centred(16, VPos::Top).transform(FontTransform::Rotate270),
        );
        root.draw(&y_desc).map_err(fail)?;
        self.draw_legend(root, (px.end, py.start), &style(14)).map_err(fail)
    }

    /// One line per curve in the plot's top right corner, whose pixel position is `corner`.
    fn draw_legend<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        corner: (i32, i32),
        style: &TextStyle<'_>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let labels: Vec<String> = self
            .curves
            .iter()
            .zip(&self.series)
            .map(
                |(c, s)| {
                    if s.is_empty() {
                        format!("{} (no data)", c.label)
                    } else {
                        c.label.clone()
                    }
                },
            )
            .collect();
        // About 0.6 em per character of a sans-serif font at 14 px; generous on purpose.
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as i32;
        let (line, row) = (22, 20);
        let width = 10 + line + 8 + longest * 9 + 10;
        let height = 8 + row * labels.len() as i32;
        let (right, top) = (corner.0 - 10, corner.1 + 10);
        let left = right - width;
        root.draw(&Rectangle::new([(left, top), (right, top + height)], WHITE.mix(0.85).filled()))?;
        root.draw(&Rectangle::new([(left, top), (right, top + height)], RGBColor(200, 200, 200)))?;
        for (i, label) in labels.iter().enumerate() {
            let y = top + 4 + row * i as i32 + row / 2;
            let colour = PALETTE[i % PALETTE.len()];
            root.draw(&PathElement::new(
                vec![(left + 10, y), (left + 10 + line, y)],
                colour.stroke_width(3),
            ))?;
            let text = style.pos(Pos::new(HPos::Left, VPos::Center));
            root.draw(&Text::new(label.clone(), (left + 10 + line + 8, y), text))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_as_people_write_them() {
        assert_eq!(number(300.0), "300");
        assert_eq!(number(0.30000000000000004), "0.3");
        assert_eq!(number(-2.5), "-2.5");
        assert_eq!(human_bytes(10f64.powf(3.0)), "1 kB");
        assert_eq!(human_bytes(999.0), "999 B");
        assert_eq!(human_bytes(3.162e6), "3.16 MB");
        assert_eq!(human_bytes(1.5e10), "15 GB");
        assert_eq!(human_bytes(2.5e20), "250000 PB");
    }

    #[test]
    fn equal_values_are_padded_and_spans_widened() {
        assert_eq!(padded(0.0, 0.0), (-1.0, 1.0));
        let (lo, hi) = padded(4.0, 4.0);
        assert!(lo < 4.0 && hi > 4.0);
        assert_eq!(padded(0.0, 100.0), (-4.0, 104.0));
    }

    #[test]
    fn undrawable_points_are_dropped() {
        let p = |step, bytes, loss| CurvePoint {
            step,
            tokens: 0,
            bytes_per_worker: bytes,
            seconds: f64::NAN,
            val_loss: loss,
        };
        let c = Curve {
            label: "a".into(),
            points: vec![p(0, 0.0, 5.0), p(1, 1e3, f64::NAN), p(2, 1e6, 3.0)],
        };
        let curves = [c];
        assert_eq!(drawable(XAxis::BytesPerWorker, &curves), vec![vec![(6.0, 3.0)]]);
        assert_eq!(drawable(XAxis::Steps, &curves), vec![vec![(0.0, 5.0), (2.0, 3.0)]]);
        assert_eq!(drawable(XAxis::Seconds, &curves), vec![Vec::<(f64, f64)>::new()]);
    }
}
