//! SVG charts of the simulator's results (plotters, SVG backend: no fonts or native libraries
//! needed; text is left to the viewer).

use std::path::Path;

use plotters::prelude::*;

/// One named line.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    pub lines: &'a [Line],
    /// Horizontal reference lines, named (e.g. a published estimate).
    pub marks: &'a [(String, f64)],
    /// Start the y axis at zero.
    pub from_zero: bool,
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("drawing a chart: {e}"))
}

/// Draws `chart` into an SVG file.
pub fn line_chart(path: &Path, chart: &Chart<'_>) -> std::io::Result<()> {
    let xs = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0));
    let ys = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .chain(chart.marks.iter().map(|m| m.1));
    let (x0, x1) = bounds(xs);
    let (mut y0, mut y1) = bounds(ys);
    if chart.from_zero {
        y0 = y0.min(0.0);
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let y1 = y1 + (y1 - y0) * 0.05;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut c = ChartBuilder::on(&root)
        .caption(chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1.max(x0 + 1e-9), y0..y1)
        .map_err(err)?;
    c.configure_mesh()
        .x_desc(chart.x)
        .y_desc(chart.y)
        .draw()
        .map_err(err)?;
    for (n, line) in chart.lines.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        c.draw_series(LineSeries::new(
            line.points.iter().copied(),
            colour.stroke_width(2),
        ))
        .map_err(err)?
        .label(line.name.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    for (name, y) in chart.marks {
        let grey = BLACK.mix(0.6);
        c.draw_series(LineSeries::new([(x0, *y), (x1, *y)], grey.stroke_width(1)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// A bar chart: one bar per (label, value).
pub fn bar_chart(path: &Path, title: &str, y: &str, bars: &[(String, f64)]) -> std::io::Result<()> {
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-12) * 1.1;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = bars.len().max(1) as u32;
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n).into_segmented(), 0.0..top)
        .map_err(err)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    c.configure_mesh()
        .disable_x_mesh()
        .y_desc(y)
        .x_labels(bars.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    c.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let colour = COLOURS[i % COLOURS.len()];
        let i = i as u32;
        Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), b.1),
            ],
            colour.filled(),
        )
    }))
    .map_err(err)?;
    root.present().map_err(err)
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
}
