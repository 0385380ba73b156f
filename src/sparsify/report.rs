//! `report.html` of a sparsify run: a summary table, then loss, sparsity, learning rate and EM/F1
//! over the steps and the per-layer sparsity, drawn by plotters' SVG backend and inlined into
//! one self-contained HTML file (no JavaScript, nothing fetched).

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::{EvalResults, Speed};
use crate::export::ExportReport;
use crate::train::log::{EvalRecord, StepLog};

/// What the report shows.
pub struct ReportData<'a> {
    pub title: String,
    pub recipe: String,
    pub log: &'a [StepLog],
    pub evals: &'a [EvalRecord],
    /// Zeros per masked parameter at the end of training.
    pub layers: &'a BTreeMap<String, f64>,
    pub export: &'a ExportReport,
    pub eval: Option<&'a EvalResults>,
    pub speed: Option<&'a Speed>,
}

const WIDTH: u32 = 860;
const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the report's chart: {e:?}")
}

/// A line chart of `series` (name, points) over steps.
fn lines(title: &str, y_desc: &str, series: &[(&str, Vec<(f64, f64)>)]) -> Result<String> {
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts.filter(|(_, y)| y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Ok(String::new());
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(y1.abs() * 1e-3).max(1e-12);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_desc)
            .y_label_formatter(&|v| format_tick(*v))
            .draw()
            .map_err(plot_err)?;
        for (i, (name, p)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = p.iter().copied().filter(|(_, y)| y.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if p.len() <= 40 {
                chart.draw_series(points.iter().map(|&q| Circle::new(q, 3, color.filled()))).map_err(plot_err)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e4).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Horizontal bars: each layer's sparsity in percent.
fn layer_bars(layers: &BTreeMap<String, f64>) -> Result<String> {
    if layers.is_empty() {
        return Ok(String::new());
    }
    let names: Vec<String> = layers.keys().rev().map(|k| k.trim_end_matches(".weight").to_string()).collect();
    let values: Vec<f64> = layers.values().rev().map(|v| v * 100.0).collect();
    let n = names.len();
    let label_px = names.iter().map(|s| s.len()).max().unwrap_or(10) as u32 * 7 + 16;
    let mut svg = String::new();
    {
        let height = 90 + 22 * n as u32;
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Sparsity per layer (zeros in the mask, end of training)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(label_px.min(WIDTH / 2))
            .build_cartesian_2d(0f64..100f64, (0..n).into_segmented())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .x_desc("% zeros")
            .y_label_style(("monospace", 12))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                SegmentValue::Exact(_) | SegmentValue::Last => String::new(),
            })
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let mut bar = Rectangle::new(
                    [(0.0, SegmentValue::Exact(i)), (v, SegmentValue::Exact(i + 1))],
                    COLORS[0].filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn mb(b: u64) -> String {
    format!("{:.2} MB", b as f64 / 1e6)
}

/// The whole page.
pub fn render(d: &ReportData) -> Result<String> {
    let step = |f: &dyn Fn(&StepLog) -> Option<f64>| -> Vec<(f64, f64)> {
        d.log.iter().filter_map(|l| f(l).map(|y| (l.step as f64, y))).collect()
    };
    let mut loss = Vec::new();
    let span = step(&|l| l.loss_span.map(f64::from));
    if !span.is_empty() {
        loss.push(("loss_span", span));
    }
    let distill = step(&|l| l.loss_distill.map(f64::from));
    if !distill.is_empty() {
        loss.push(("loss_distill", distill));
    }
    let layer = step(&|l| l.loss_layer.map(f64::from));
    if !layer.is_empty() {
        loss.push(("loss_layer (before gain)", layer));
    }
    loss.push(("loss (the total, drawn last)", step(&|l| Some(l.loss as f64))));
    let mut charts = vec![
        lines("Training loss", "loss", &loss)?,
        lines("Sparsity of the masked weights", "% zeros", &[("sparsity", step(&|l| Some(l.sparsity * 100.0)))])?,
        lines("Learning rate", "lr", &[("learning rate", step(&|l| Some(l.lr as f64)))])?,
    ];
    if !d.evals.is_empty() {
        let f1: Vec<(f64, f64)> = d.evals.iter().map(|e| (e.step as f64, e.f1)).collect();
        let em: Vec<(f64, f64)> = d.evals.iter().map(|e| (e.step as f64, e.exact_match)).collect();
        charts.push(lines(
            "Evaluation at each epoch end (training graph)",
            "SQuAD %",
            &[("F1", f1), ("exact match", em)],
        )?);
    }
    charts.push(layer_bars(d.layers)?);

    let mut rows: Vec<(String, String)> = vec![
        ("recipe".into(), d.recipe.clone()),
        ("steps".into(), d.log.last().map(|l| (l.step + 1).to_string()).unwrap_or_else(|| "0".into())),
        ("sparsity (pruned layers)".into(), format!("{:.2}%", d.export.pruned_layers_sparsity * 100.0)),
        ("sparsity (all weights)".into(), format!("{:.2}%", d.export.overall_sparsity * 100.0)),
        (
            "size".into(),
            format!(
                "{} ({} gzipped){}",
                mb(d.export.model_bytes),
                mb(d.export.model_gzip_bytes),
                d.export.dense_model_bytes.map(|b| format!(", dense {}", mb(b))).unwrap_or_default()
            ),
        ),
    ];
    if let Some(e) = d.eval {
        rows.push((
            "SQuAD F1 / EM".into(),
            format!(
                "{:.2} / {:.2} (dense {:.2} / {:.2}; F1 {:+.2}) on {} questions",
                e.f1, e.exact_match, e.dense_f1, e.dense_exact_match, e.f1_delta, e.questions
            ),
        ));
    }
    if let Some(s) = d.speed {
        rows.push((
            "speed".into(),
            format!(
                "{:.1} items/s vs dense {:.1} ({:.2}x), batch {} seq {}",
                s.deployment_items_per_second, s.dense_items_per_second, s.ratio, s.batch_size, s.seq_len
            ),
        ));
    }
    let table: String =
        rows.iter().map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>\n", esc(k), esc(v))).collect();
    let layer_rows: String = d
        .layers
        .iter()
        .map(|(k, v)| format!("<tr><td>{}</td><td class=\"n\">{:.2}%</td></tr>\n", esc(k), v * 100.0))
        .collect();
    let figures: String =
        charts.into_iter().filter(|c| !c.is_empty()).map(|c| format!("<figure>{c}</figure>\n")).collect();
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 24px auto; max-width: 900px; color: #222; }}\n\
         table {{ border-collapse: collapse; margin: 12px 0 24px; }}\n\
         th, td {{ text-align: left; padding: 4px 12px; border-bottom: 1px solid #ddd; }}\n\
         td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}\n\
         figure {{ margin: 16px 0; }}\n</style>\n</head>\n<body>\n<h1>{title}</h1>\n<table>\n{table}</table>\n\
         {figures}<h2>Per-layer sparsity</h2>\n<table>\n<tr><th>parameter</th><th>zeros</th></tr>\n{layer_rows}</table>\n\
         </body>\n</html>\n",
        title = esc(&d.title)
    ))
}
