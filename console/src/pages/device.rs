//! A device's page: its metadata, and per channel a chart over 15 min, 1 h, 24 h or 7 d:
//! the min–max band and mean of the readings (bucketed in SQL, at most 2 000 points),
//! or of the hourly statistics for a week, with threshold lines and alert spans shaded.
//! Drawn as SVG on the server: no chart library, nothing to load.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use maud::{html, Markup};
use sqlx::types::chrono::{DateTime, Utc};

use crate::layout::{age, PageError};
use crate::plant::{self, AlertSpan, Bucket, Channel, Range, Source};
use crate::state::Shared;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 20.0;

pub async fn page(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let range = match query.get("range").map(String::as_str) {
        None | Some("") => Range::Hour,
        Some(code) => Range::from_code(code).ok_or_else(|| {
            PageError::bad_request(format!("range {code:?} is not one of 15m, 1h, 24h, 7d"))
        })?,
    };
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "range") {
        return Err(PageError::bad_request(format!(
            "unknown parameter {unknown:?}: a device page takes only range"
        )));
    }
    protocol::validate_id(&id)
        .map_err(|e| PageError::bad_request(format!("device {id:?}: {e}")))?;
    let snapshot = state.snapshot();
    let device = match snapshot.device(&id) {
        Some(device) => device.clone(),
        // The snapshot may be older than the device: ask PostgreSQL about this one.
        None => plant::device(&state.pool, &id)
            .await
            .map_err(|e| PageError::history(&e))?
            .ok_or_else(|| PageError::not_found(format!("there is no device {id:?}")))?,
    };
    let end = Utc::now();
    let start = end - range.span();
    let spans = plant::alert_spans(&state.pool, &device.device_id, start, end)
        .await
        .map_err(|e| PageError::history(&e))?;
    let mut charts = Vec::new();
    for channel in &device.channels {
        let (source, buckets) = plant::history(&state.pool, &device.device_id, channel, range, end)
            .await
            .map_err(|e| PageError::history(&e))?;
        charts.push((channel, source, buckets));
    }
    let session = state.access.session(&headers);
    let frame = state.frame(&snapshot, &device.name, "", session.as_ref());
    let last_seen = snapshot
        .presence
        .get(&device.device_id)
        .and_then(|p| p.last_seen);
    let body = html! {
        h1 { (device.name) " (" (device.device_id) ")" }
        p {
            (device.kind) " · site " (device.site) " · line " (device.line)
            " · last seen " (age(last_seen))
            @if !device.enabled { " · disabled" }
        }
        @if !device.description.is_empty() { p { (device.description) } }
        div .table {
            table {
                thead { tr { th { "channel" } th { "unit" } th { "sample period" } th { "range" }
                    th { "warning" } th { "critical" } } }
                tbody {
                    @for c in &device.channels {
                        tr {
                            td { (c.name) }
                            td { (c.unit) }
                            td { (c.sample_period_ms) " ms" }
                            td { (c.range_min) " … " (c.range_max) }
                            td { (bounds(c.warn_low, c.warn_high)) }
                            td { (bounds(c.crit_low, c.crit_high)) }
                        }
                    }
                }
            }
        }
        p .ranges {
            "Range: "
            @for r in Range::ALL {
                a href={ "?range=" (r.code()) } aria-current=[(r == range).then_some("page")] { (r.code()) }
            }
        }
        @for (channel, source, buckets) in &charts {
            (chart(channel, *source, buckets, &spans, start, end))
        }
    };
    Ok(crate::layout::page(&frame, body))
}

fn bounds(low: Option<f64>, high: Option<f64>) -> String {
    match (low, high) {
        (None, None) => "—".to_owned(),
        (Some(low), None) => format!("< {low}"),
        (None, Some(high)) => format!("> {high}"),
        (Some(low), Some(high)) => format!("< {low} or > {high}"),
    }
}

fn chart(
    channel: &Channel,
    source: Source,
    buckets: &[Bucket],
    spans: &[AlertSpan],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Markup {
    let thresholds: Vec<(f64, &str)> = [
        (channel.crit_low, "critical"),
        (channel.warn_low, "warning"),
        (channel.warn_high, "warning"),
        (channel.crit_high, "critical"),
    ]
    .into_iter()
    .filter_map(|(t, kind)| Some((t?, kind)))
    .collect();
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for b in buckets {
        lo = lo.min(b.min);
        hi = hi.max(b.max);
    }
    for (t, _) in &thresholds {
        lo = lo.min(*t);
        hi = hi.max(*t);
    }
    if !lo.is_finite() || !hi.is_finite() {
        lo = channel.range_min;
        hi = channel.range_max;
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    let (lo, hi) = (lo - pad, hi + pad);
    let t0 = start.timestamp_millis() as f64;
    let t1 = end.timestamp_millis() as f64;
    let x =
        |t: DateTime<Utc>| LEFT + (t.timestamp_millis() as f64 - t0) / (t1 - t0) * (WIDTH - LEFT);
    let y = |v: f64| (HEIGHT - BOTTOM) - (v - lo) / (hi - lo) * (HEIGHT - BOTTOM - 4.0);
    let band: Vec<String> = buckets
        .iter()
        .map(|b| format!("{:.1},{:.1}", x(b.t), y(b.max)))
        .chain(
            buckets
                .iter()
                .rev()
                .map(|b| format!("{:.1},{:.1}", x(b.t), y(b.min))),
        )
        .collect();
    let mean: Vec<String> = buckets
        .iter()
        .map(|b| format!("{:.1},{:.1}", x(b.t), y(b.mean)))
        .collect();
    let spans: Vec<(f64, f64, &str)> = spans
        .iter()
        .filter(|s| s.channel_id.is_none_or(|c| c == channel.channel_id))
        .map(|s| {
            let from = x(s.opened_at.max(start));
            let to = x(s.resolved_at.unwrap_or(end).min(end));
            (from, (to - from).max(1.0), s.severity.as_str())
        })
        .collect();
    let what = match source {
        Source::Readings => "readings, min–max band and mean per bucket",
        Source::Hourly => "hourly statistics, min–max band and mean per hour",
    };
    html! {
        section .chart data-channel=(channel.channel_id) data-points=(buckets.len() * 2) {
            h3 { (channel.name) " (" (channel.unit) ")" }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
                aria-label={ (channel.name) ": " (what) } {
                @for (from, width, severity) in &spans {
                    rect x=(format!("{from:.1}")) y="0" width=(format!("{width:.1}"))
                        height=(HEIGHT - BOTTOM)
                        fill=(if *severity == "critical" { "#fbd5d5" } else { "#fdeccc" }) {
                        title { (severity) " alert" }
                    }
                }
                line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) stroke="#9aa4af" {}
                text x="2" y="12" font-size="11" { (format!("{hi:.1}")) }
                text x="2" y=(HEIGHT - BOTTOM) font-size="11" { (format!("{lo:.1}")) }
                @for (t, kind) in &thresholds {
                    line x1=(LEFT) x2=(WIDTH) y1=(format!("{:.1}", y(*t))) y2=(format!("{:.1}", y(*t)))
                        stroke=(if *kind == "critical" { "#b42318" } else { "#b7791f" })
                        stroke-dasharray="6 4" {
                        title { (kind) " threshold " (t) " " (channel.unit) }
                    }
                }
                @if !buckets.is_empty() {
                    polygon points=(band.join(" ")) fill="#2f6fd0" fill-opacity="0.25" {}
                    polyline points=(mean.join(" ")) fill="none" stroke="#2f6fd0" stroke-width="1.5" {}
                }
            }
            p .meta {
                (what) "; " (buckets.len()) " buckets"
                @if buckets.is_empty() { " — no readings in this range" }
                @if !spans.is_empty() { "; shaded: alerts" }
            }
        }
    }
}
