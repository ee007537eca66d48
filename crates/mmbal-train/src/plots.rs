//! Plots. [`plot_run`] writes the SVG plots of a run next to its results: accuracy per epoch (fused and per modality,
//! val), the method's diagnostics and every run's OGM score ratio per epoch, the mean contribution of each modality per epoch (the valuation paper's Fig. 2(d)) and
//! the histogram of per-sample contributions of the last valued epoch. [`line_figure`], [`xy_figure`],
//! [`scatter_figure`] and [`bar_figure`] write a figure as SVG and PNG (summaries over many runs,
//! feature embeddings).

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Lines `(name, points)` over epochs into an SVG file.
fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    draw_lines(
        SVGBackend::new(path, SIZE).into_drawing_area(),
        title,
        ("epoch", y_label),
        lines,
    )
}

const SIZE: (u32, u32) = (720, 420);

/// One figure drawn twice by `$draw(area, args..)`, as `stem.svg` and `stem.png`; evaluates to
/// both paths (a macro: the drawing functions are generic over the backend).
macro_rules! svg_and_png {
    ($stem:expr, $draw:ident($($arg:expr),* $(,)?)) => {{
        let (svg, png) = ($stem.with_extension("svg"), $stem.with_extension("png"));
        $draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), $($arg),*)
            .with_context(|| format!("{}: cannot draw", svg.display()))?;
        $draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), $($arg),*)
            .with_context(|| format!("{}: cannot draw", png.display()))?;
        Ok(vec![svg, png])
    }};
}

/// Registers the embedded font (DejaVu Sans Mono, assets/) once: plotters lays out text with
/// it for SVG and draws it into PNG, so plots need no system fonts.
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    if !ok {
        return Err(anyhow!("the embedded font could not be loaded"));
    }
    Ok(())
}

/// `stem.svg` and `stem.png` of the same lines over epochs; returns both paths.
pub fn line_figure(
    stem: &Path,
    title: &str,
    y_label: &str,
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<Vec<PathBuf>> {
    xy_figure(stem, title, ("epoch", y_label), lines)
}

/// `stem.svg` and `stem.png` of lines over any x (`labels`: x and y axis names).
pub fn xy_figure(
    stem: &Path,
    title: &str,
    labels: (&str, &str),
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<Vec<PathBuf>> {
    svg_and_png!(stem, draw_lines(title, labels, lines))
}

/// `stem.svg` and `stem.png`: one bar per `(name, value, whisker)` with a +-whisker line (a
/// standard deviation or an interval's half-width, as the caller says in the title).
pub fn bar_figure(
    stem: &Path,
    title: &str,
    y_label: &str,
    bars: &[(String, f64, f64)],
) -> Result<Vec<PathBuf>> {
    svg_and_png!(stem, draw_bars(title, y_label, bars))
}

fn draw_bars<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    bars: &[(String, f64, f64)],
) -> Result<()> {
    register_font()?;
    let n = bars.len().max(1);
    let lo = bars.iter().map(|b| b.1 - b.2).fold(0.0f64, f64::min);
    let hi = bars.iter().map(|b| b.1 + b.2).fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.1).max(0.5);
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(12)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.5..(n as f64 - 0.5), (lo - 2.0 * pad)..(hi + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_label)
        .draw()
        .map_err(err)?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(-0.5, 0.0), (n as f64 - 0.5, 0.0)],
            BLACK,
        )))
        .map_err(err)?;
    for (i, (name, v, sd)) in bars.iter().enumerate() {
        let x = i as f64;
        let colour = if *v >= 0.0 { COLOURS[0] } else { COLOURS[3] };
        chart
            .draw_series([
                Rectangle::new([(x - 0.35, 0.0), (x + 0.35, *v)], colour.filled()).into_dyn(),
                PathElement::new(vec![(x, v - sd), (x, v + sd)], BLACK).into_dyn(),
                Text::new(
                    name.clone(),
                    (x - 0.35, lo - 1.5 * pad),
                    ("sans-serif", 13).into_font(),
                )
                .into_dyn(),
            ])
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    (x_label, y_label): (&str, &str),
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    register_font()?;
    let xs = || lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let ys = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    // Epochs start at 1; other axes (missing rates) where their points start.
    let x_min = xs().fold(f64::INFINITY, f64::min).min(1.0);
    let x_max = xs().fold(1.0, f64::max);
    let (y_min, y_max) = ys.fold((0.0f64, 1.0f64), |(a, b), y| (a.min(y), b.max(y)));
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(
            x_min..x_max.max(x_min + 1.0),
            (y_min - 0.05)..(y_max + 0.05),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// `stem.svg` and `stem.png`: points `(x, y, class)`, one colour per class (`classes` names
/// them, in the legend).
pub fn scatter_figure(
    stem: &Path,
    title: &str,
    points: &[(f64, f64, usize)],
    classes: &[String],
) -> Result<Vec<PathBuf>> {
    svg_and_png!(stem, draw_scatter(title, points, classes))
}

/// Ten colours for classes (more classes repeat them).
const CLASS_COLOURS: [RGBColor; 10] = [
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

fn draw_scatter<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    points: &[(f64, f64, usize)],
    classes: &[String],
) -> Result<()> {
    register_font()?;
    let bounds = |f: fn(&(f64, f64, usize)) -> f64| {
        let (lo, hi) = points
            .iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        if lo.is_finite() && hi > lo {
            let pad = (hi - lo) * 0.05;
            (lo - pad, hi + pad)
        } else {
            (-1.0, 1.0)
        }
    };
    let (x, y) = (bounds(|p| p.0), bounds(|p| p.1));
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(err)?;
    chart.configure_mesh().draw().map_err(err)?;
    for (c, name) in classes.iter().enumerate() {
        let colour = CLASS_COLOURS[c % CLASS_COLOURS.len()];
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.2 == c)
                    .map(|p| Circle::new((p.0, p.1), 3, colour.filled())),
            )
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Circle::new((x + 6, y), 3, colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Side-by-side bars of per-sample contributions, one colour per modality, bins of 0.25.
fn histogram(path: &Path, title: &str, names: &[String], values: &[f32]) -> Result<()> {
    register_font()?;
    let m = names.len().max(1);
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let width = 0.25f64;
    let first = ((lo as f64) / width).floor() as i64;
    let last = ((hi as f64) / width).floor() as i64;
    let bins = (last - first + 1).max(1) as usize;
    let mut counts = vec![vec![0usize; bins]; m];
    for (k, &v) in values.iter().enumerate() {
        let b = (((v as f64) / width).floor() as i64 - first) as usize;
        counts[k % m][b.min(bins - 1)] += 1;
    }
    let y_max = counts.iter().flatten().copied().max().unwrap_or(1) as f64;
    let x0 = first as f64 * width;
    let x1 = x0 + bins as f64 * width;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x0..x1, 0.0..y_max * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("contribution (bin start)")
        .y_desc("samples")
        .draw()
        .map_err(err)?;
    let bar = width / m as f64;
    for (i, name) in names.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(counts[i].iter().enumerate().map(|(b, &c)| {
                let left = x0 + b as f64 * width + i as f64 * bar;
                Rectangle::new([(left, 0.0), (left + bar * 0.9, c as f64)], colour.filled())
            }))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Writes the plots of a run folder (`metrics.jsonl`, `contributions/`), returning the files
/// written. Contribution plots are made only for runs whose method logged contributions.
pub fn plot_run(run_dir: &Path, modalities: &[String]) -> Result<Vec<PathBuf>> {
    let records = crate::read_log(&run_dir.join("metrics.jsonl"))?;
    let mut written = Vec::new();
    let mut acc = vec![(
        "val fused".to_string(),
        records
            .iter()
            .filter_map(|r| r.val.as_ref().map(|v| (r.epoch as f64, v.acc)))
            .collect::<Vec<_>>(),
    )];
    for m in modalities {
        acc.push((
            format!("val {m}"),
            records
                .iter()
                .filter_map(|r| {
                    r.val
                        .as_ref()
                        .and_then(|v| v.modality_acc.get(m))
                        .map(|a| (r.epoch as f64, *a))
                })
                .collect(),
        ));
    }
    let path = run_dir.join("accuracy.svg");
    line_chart(&path, "Accuracy (val)", "accuracy", &acc)?;
    written.push(path);

    // Every method's own quantities (coefficients, ratios, weights, speeds) and the OGM score
    // ratio that every run logs; counts and timings are left to the log.
    let mut keys: Vec<String> = records
        .iter()
        .flat_map(|r| r.method.keys().cloned())
        .filter(|k| {
            !k.starts_with("contribution_")
                && !["seconds", "samples", "rows", "estimates", "steps"]
                    .iter()
                    .any(|w| k.ends_with(w))
        })
        .collect();
    keys.sort();
    keys.dedup();
    let mut series: Vec<(String, Vec<(f64, f64)>)> = keys
        .iter()
        .map(|k| {
            let points = records
                .iter()
                .filter_map(|r| r.method.get(k).map(|v| (r.epoch as f64, *v)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            (k.clone(), points)
        })
        .collect();
    for m in modalities {
        series.push((
            format!("score ratio {m}"),
            records
                .iter()
                .filter_map(|r| r.score_ratio.get(m).map(|v| (r.epoch as f64, *v)))
                .collect(),
        ));
    }
    let path = run_dir.join("method.svg");
    line_chart(&path, "Balance diagnostics per epoch", "value", &series)?;
    written.push(path);

    let contributions: Vec<(String, Vec<(f64, f64)>)> = modalities
        .iter()
        .map(|m| {
            let key = format!("contribution_{m}");
            // The method's own valuation, else the trainer's (`track_contributions`).
            let points = records
                .iter()
                .filter_map(|r| {
                    r.method
                        .get(&key)
                        .or_else(|| r.contributions.get(m))
                        .map(|v| (r.epoch as f64, *v))
                })
                .collect();
            (m.clone(), points)
        })
        .collect();
    if contributions.iter().all(|(_, p)| p.is_empty()) {
        return Ok(written);
    }
    let path = run_dir.join("contributions.svg");
    line_chart(
        &path,
        "Mean contribution per modality",
        "mean Shapley value",
        &contributions,
    )?;
    written.push(path);
    let last = records
        .iter()
        .rev()
        .map(|r| run_dir.join(format!("contributions/epoch_{:03}.npy", r.epoch)))
        .find(|p| p.is_file());
    if let Some(npy) = last {
        let (shape, values) = mmbal_data::npy::read_f32(&npy)?;
        let path = run_dir.join("contributions_hist.svg");
        let stem = npy.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        histogram(
            &path,
            &format!(
                "Per-sample contributions, {stem} ({} samples)",
                shape.first().copied().unwrap_or(0)
            ),
            modalities,
            &values,
        )?;
        written.push(path);
    }
    Ok(written)
}
