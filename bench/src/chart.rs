//! The report's picture (`docs/benchmarks.svg`): each hop's end-to-end rate beside its
//! ceiling from the component benches, and the latency percentiles against the 250 ms
//! bar. Rates span four orders of magnitude (a Kafka producer alone does millions of
//! readings/s, PostgreSQL tens of thousands), so the rate panel is logarithmic.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// One horizontal bar of the rate panel.
/// A hop of the chart: its name, its rate in a throughput run, and its ceilings.
type Hop<'a> = (
    &'a str,
    fn(&crate::e2e::Throughput) -> f64,
    Vec<(&'a str, f64)>,
);

pub struct RateBar {
    pub label: String,
    pub value: f64,
    /// Ceilings are drawn hollow, end-to-end figures filled.
    pub ceiling: bool,
    /// Bars of one hop share a colour.
    pub hop: usize,
}

/// One group of the latency panel: a run's p50, p90, p99 and max.
pub struct LatencyGroup {
    pub label: String,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

const HOP_COLOURS: [RGBColor; 4] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0x81, 0x72, 0xb3),
];

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k/s", v / 1e3)
    } else {
        format!("{v:.0}/s")
    }
}

pub fn draw(
    path: &Path,
    title: &str,
    rates: &[RateBar],
    bar_rate: f64,
    latency: &[LatencyGroup],
    bar_latency_ms: f64,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 620)).into_drawing_area();
    let result = (|| -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 20))?;
        let (left, right) = root.split_horizontally(760);
        draw_rates(&left, rates, bar_rate)?;
        draw_latency(&right, latency, bar_latency_ms)?;
        root.present()?;
        Ok(())
    })();
    result
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

fn draw_rates<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    bars: &[RateBar],
    bar_rate: f64,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let n = bars.len().max(1) as f64;
    let max = bars.iter().map(|b| b.value).fold(bar_rate, f64::max) * 3.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Throughput per hop, readings/s (log scale): filled = end to end, hollow = ceiling",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(10)
        .build_cartesian_2d((1e3f64..max).log_scale(), 0f64..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_labels(8)
        .x_label_formatter(&|v| fmt_rate(*v))
        .draw()?;
    for (i, bar) in bars.iter().enumerate() {
        let top = n - i as f64 - 0.15;
        let bottom = n - i as f64 - 0.85;
        let colour = HOP_COLOURS[bar.hop % HOP_COLOURS.len()];
        let value = bar.value.max(1e3);
        let style = if bar.ceiling {
            colour.stroke_width(2)
        } else {
            colour.mix(0.85).filled()
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(1e3, bottom), (value, top)],
            style,
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{}  {}", bar.label, fmt_rate(bar.value)),
            (1.1e3, top - 0.12),
            ("sans-serif", 12).into_font().color(&BLACK),
        )))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(bar_rate, 0.0), (bar_rate, n)],
        RED.stroke_width(2),
    )))?;
    chart.draw_series(std::iter::once(Text::new(
        format!("bar {}", fmt_rate(bar_rate)),
        (bar_rate * 1.05, n - 0.05),
        ("sans-serif", 12).into_font().color(&RED),
    )))?;
    Ok(())
}

fn draw_latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    groups: &[LatencyGroup],
    bar_ms: f64,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let top = groups.iter().map(|g| finite(g.max)).fold(bar_ms, f64::max) * 1.15;
    let slots = (groups.len() * 5).max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Publish → committed row at ~10k readings/s, ms",
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(10)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..slots, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_labels(8)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (g, group) in groups.iter().enumerate() {
        let base = g as f64 * 5.0;
        let values = [
            ("p50", group.p50),
            ("p90", group.p90),
            ("p99", group.p99),
            ("max", group.max),
        ];
        for (k, (name, value)) in values.iter().enumerate() {
            let x0 = base + k as f64 + 0.55;
            let v = finite(*value);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x0 + 0.8, v)],
                HOP_COLOURS[g % HOP_COLOURS.len()]
                    .mix(0.3 + 0.15 * k as f64)
                    .filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{v:.0}"),
                (x0 + 0.1, v + top * 0.04),
                ("sans-serif", 12).into_font().color(&BLACK),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                name.to_string(),
                (x0 + 0.1, top * 0.05),
                ("sans-serif", 12).into_font().color(&BLACK),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            group.label.clone(),
            (base + 0.55, top * 0.97),
            ("sans-serif", 12).into_font().color(&BLACK),
        )))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, bar_ms), (slots, bar_ms)],
        RED.stroke_width(2),
    )))?;
    chart.draw_series(std::iter::once(Text::new(
        format!("bar: p99 ≤ {bar_ms:.0} ms"),
        (slots * 0.55, bar_ms + top * 0.03),
        ("sans-serif", 12).into_font().color(&RED),
    )))?;
    Ok(())
}

/// The report's chart from the run's figures.
pub fn draw_report(
    svg: &std::path::Path,
    machine: &crate::machine::Machine,
    c: &crate::components::Components,
    throughput: &[crate::e2e::Throughput],
    latency: &[crate::e2e::LatencyRun],
) -> anyhow::Result<()> {
    let per_frame = crate::components::BRIDGE_READINGS_PER_FRAME;
    // Per hop: its end-to-end rate in each throughput run, then its ceilings.
    let hops: [Hop; 3] = [
        ("agents published", |t| t.agents_rate, vec![]),
        (
            "bridge → Kafka",
            |t| t.bridge_readings_rate,
            vec![(
                "ceiling: bridge alone (embedded, 50 a frame)",
                c.bridge.embedded * per_frame,
            )],
        ),
        (
            "ingester → PostgreSQL",
            |t| t.ingest_rate,
            vec![
                ("ceiling: ingester pipeline alone", c.ingest.pipeline),
                ("ceiling: raw binary COPY", c.ingest.copy_ceiling),
            ],
        ),
    ];
    let mut bars = Vec::new();
    for (hop, (name, rate, ceilings)) in hops.into_iter().enumerate() {
        for t in throughput {
            bars.push(RateBar {
                label: format!("{name}, {} devices", t.workload.devices),
                value: rate(t),
                ceiling: false,
                hop,
            });
        }
        for (label, value) in ceilings {
            bars.push(RateBar {
                label: label.to_owned(),
                value,
                ceiling: true,
                hop,
            });
        }
    }
    let groups: Vec<LatencyGroup> = latency
        .iter()
        .map(|l| LatencyGroup {
            label: format!("batch.age {}", l.batch_age),
            p50: l.latency.p50,
            p90: l.latency.p90,
            p99: l.latency.p99,
            max: l.latency.max,
        })
        .collect();
    draw(
        svg,
        &format!(
            "Plant telemetry pipeline benchmarks — {}, {} cores, {}",
            machine.date_utc, machine.cores, machine.cpu_model
        ),
        &bars,
        crate::report::BAR_RATE,
        &groups,
        crate::report::BAR_P99_MS,
    )
}
