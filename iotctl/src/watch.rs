//! `iotctl watch`: the live one-screen summary `scripts/run.sh` shows while the pipeline
//! runs: readings per second at each hop, the ingester's Kafka lag, the open alerts and
//! the last value of every channel.
//!
//! Every figure is what a service says of itself, read each interval: the agents' health
//! on their retained MQTT `status` topics, the bridge's and the ingester's `/metrics`,
//! the `alerts` table, the `latest` hashes in Redis. A source that does not answer shows
//! as such on its line; the summary never stops for it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use observe::agents::{AgentReports, Broker};
use observe::metrics::{metric_sum, Rates};
use redis::AsyncCommands;
use serde::Serialize;
use tokio::sync::watch;

use crate::global::{Global, Outcome};
use crate::http::HttpUrl;
use crate::output;
use crate::services::{self, Channels};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// Stop after this many refreshes (0: until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

/// One refresh: every figure, or why it is missing.
#[derive(Debug, Default, Serialize)]
struct Summary {
    at_ms: i64,
    /// Readings per second the agents sampled, from their last two health reports.
    agent_readings_per_s: Option<f64>,
    agents: usize,
    bridge: Hop,
    ingester: Hop,
    /// Records the ingester has yet to consume, over all partitions.
    kafka_lag: Option<f64>,
    open_alerts: BTreeMap<String, i64>,
    newest_alerts: Vec<OpenAlert>,
    latest: Vec<LatestValue>,
    /// Sources that did not answer, with why.
    unavailable: Vec<String>,
}

/// One service's throughput: a rate over the last interval and its counters.
#[derive(Debug, Default, Serialize)]
struct Hop {
    per_s: Option<f64>,
    total: Option<f64>,
    dead_lettered: Option<f64>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct OpenAlert {
    alert_id: i64,
    device_id: String,
    rule: String,
    severity: String,
    state: String,
    message: String,
}

#[derive(Debug, Serialize)]
struct LatestValue {
    device_id: String,
    channel: String,
    unit: String,
    value: Option<f64>,
    age_ms: i64,
}

pub async fn run(global: &Global, args: &WatchArgs) -> Result<Outcome> {
    let mut agents = agent_health(global)?;
    // The agents' retained statuses come right after subscribing: give them a moment so
    // the first screen already counts the agents.
    let _ = tokio::time::timeout(Duration::from_secs(1), agents.changed()).await;
    let interval = Duration::from_secs(args.interval);
    let tty = std::io::stdout().is_terminal() && !global.json;
    let mut rates = Rates::default();
    let mut refreshes = 0;
    // One Ctrl-C listener for the whole run: a SIGINT arriving between two listeners
    // would be lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let summary = tokio::select! {
            summary = collect(global, &agents, &mut rates) => summary,
            _ = &mut ctrl_c => return Ok(Outcome::Done),
        };
        if global.json {
            output::emit_json(&summary);
        } else {
            let text = render(&summary, args.interval);
            let mut out = std::io::stdout().lock();
            // Redraw in place on a terminal; a log or a pipe gets one block per refresh.
            let clear = if tty { "\x1b[2J\x1b[H" } else { "\n" };
            if write!(out, "{clear}{text}")
                .and_then(|()| out.flush())
                .is_err()
            {
                return Ok(Outcome::Done);
            }
        }
        refreshes += 1;
        if args.count != 0 && refreshes >= args.count {
            return Ok(Outcome::Done);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut ctrl_c => return Ok(Outcome::Done),
        }
    }
}

fn agent_health(global: &Global) -> Result<watch::Receiver<Result<AgentReports, String>>> {
    Ok(observe::agents::follow(Broker {
        host: global.mqtt.host.clone(),
        port: global.mqtt.port,
        prefix: global.mqtt_prefix.clone(),
        client_id: services::mqtt_client_id(global, "watch"),
        credentials: services::mqtt_credentials(global)?,
    }))
}

async fn collect(
    global: &Global,
    agents: &watch::Receiver<Result<AgentReports, String>>,
    rates: &mut Rates,
) -> Summary {
    let mut summary = Summary {
        at_ms: service::clock::now_ms_i64(),
        ..Summary::default()
    };
    match &*agents.borrow() {
        Ok(reports) => {
            (summary.agents, summary.agent_readings_per_s) =
                observe::agents::readings_per_s(reports);
        }
        Err(e) => summary.unavailable.push(e.clone()),
    }
    let mut rate = |key: &'static str, total: f64| rates.rate(key, total);
    match scrape(&global.bridge_metrics).await {
        Ok(text) => {
            let total = metric_sum(&text, "bridge_messages_produced_total");
            summary.bridge = Hop {
                per_s: total.and_then(|t| rate("bridge", t)),
                total,
                dead_lettered: metric_sum(&text, "bridge_messages_dead_lettered_total"),
            };
        }
        Err(e) => summary
            .unavailable
            .push(format!("bridge {}: {e}", global.bridge_metrics)),
    }
    match scrape(&global.ingester_metrics).await {
        Ok(text) => {
            let total = metric_sum(&text, "ingester_readings_inserted_total");
            summary.ingester = Hop {
                per_s: total.and_then(|t| rate("ingester", t)),
                total,
                dead_lettered: metric_sum(&text, "ingester_records_dead_lettered_total"),
            };
            summary.kafka_lag = metric_sum(&text, "ingester_consumer_lag");
        }
        Err(e) => summary
            .unavailable
            .push(format!("ingester {}: {e}", global.ingester_metrics)),
    }
    let channels = match database(global, &mut summary).await {
        Ok(channels) => channels,
        Err(e) => {
            summary.unavailable.push(format!("PostgreSQL: {e:#}"));
            Channels::new()
        }
    };
    if let Err(e) = latest(global, &channels, &mut summary).await {
        summary.unavailable.push(format!("Redis: {e:#}"));
    }
    summary
}

async fn scrape(url: &HttpUrl) -> Result<String> {
    let response = crate::http::get(url, "/metrics", Duration::from_secs(2)).await?;
    anyhow::ensure!(response.status == 200, "HTTP {}", response.status);
    Ok(response.body)
}

/// Open alerts by severity and the newest few; the channel names for the latest values.
async fn database(global: &Global, summary: &mut Summary) -> Result<Channels> {
    let pool = services::postgres(global).await?;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT severity::text, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY 1",
    )
    .fetch_all(&pool)
    .await?;
    summary.open_alerts = counts.into_iter().collect();
    summary.newest_alerts = sqlx::query_as(
        "SELECT alert_id, device_id, rule, severity::text AS severity, state::text AS state, \
                message \
           FROM alerts WHERE state <> 'resolved' ORDER BY opened_at DESC LIMIT 5",
    )
    .fetch_all(&pool)
    .await?;
    let channels = services::channels(&pool).await?;
    pool.close().await;
    Ok(channels)
}

/// The latest value of every known channel, from Redis.
async fn latest(global: &Global, channels: &Channels, summary: &mut Summary) -> Result<()> {
    let mut redis = services::redis(global).await?;
    let mut devices: Vec<&str> = channels.keys().map(|(d, _)| d.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    let now = service::clock::now_ms_i64();
    for device in devices {
        let key = services::redis_keys(global).latest(device);
        let fields: BTreeMap<String, String> = redis.hgetall(&key).await?;
        let mut values: Vec<(i16, contracts::redis::LatestValue)> = fields
            .iter()
            .filter_map(|(field, json)| {
                Some((field.parse().ok()?, serde_json::from_str(json).ok()?))
            })
            .collect();
        values.sort_by_key(|(channel, _)| *channel);
        for (channel, stored) in values {
            let info = channels.get(&(device.to_owned(), channel));
            summary.latest.push(LatestValue {
                device_id: device.to_owned(),
                channel: info.map_or_else(|| channel.to_string(), |i| i.name.clone()),
                unit: info.map(|i| i.unit.clone()).unwrap_or_default(),
                value: stored.v.map(output::as_measured),
                age_ms: now - stored.ts,
            });
        }
    }
    Ok(())
}

fn rate_text(per_s: Option<f64>) -> String {
    match per_s {
        None => "…".to_owned(),
        // Frames come every few seconds per device: show the fraction at low rates.
        Some(r) if r < 10.0 => format!("{r:.1}/s"),
        Some(r) => format!("{r:.0}/s"),
    }
}

fn count_text(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

fn render(s: &Summary, interval: u64) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "plant telemetry, {} (every {interval} s; Ctrl-C stops)",
        output::time_ms(s.at_ms)
    ));
    line(String::new());
    line(format!(
        "  agents ({}) sample            {:>10} readings",
        s.agents,
        rate_text(s.agent_readings_per_s)
    ));
    line(format!(
        "  bridge  MQTT -> Kafka         {:>10} frames     produced {}, dead-lettered {}",
        rate_text(s.bridge.per_s),
        count_text(s.bridge.total),
        count_text(s.bridge.dead_lettered)
    ));
    line(format!(
        "  ingester Kafka -> PostgreSQL  {:>10} readings   stored {}, dead-lettered {}",
        rate_text(s.ingester.per_s),
        count_text(s.ingester.total),
        count_text(s.ingester.dead_lettered)
    ));
    line(format!(
        "  Kafka lag (ingester)          {:>10} records",
        count_text(s.kafka_lag)
    ));
    let open: i64 = s.open_alerts.values().sum();
    let by_severity: Vec<String> = s
        .open_alerts
        .iter()
        .map(|(severity, n)| format!("{n} {severity}"))
        .collect();
    line(format!(
        "  open alerts                   {open:>10}         {}",
        by_severity.join(", ")
    ));
    for alert in &s.newest_alerts {
        line(format!(
            "    #{:<6} {:<15} {:<8} {:<8} {:<12} {}",
            alert.alert_id, alert.device_id, alert.rule, alert.severity, alert.state, alert.message
        ));
    }
    line(String::new());
    line(format!(
        "  {:<15} {:<14} {:>12} {:<6} {:>8}",
        "device", "channel", "value", "unit", "age"
    ));
    for v in &s.latest {
        line(format!(
            "  {:<15} {:<14} {:>12} {:<6} {:>8}",
            v.device_id,
            v.channel,
            v.value
                .map_or_else(|| "fault".to_owned(), |x| output::reading(x as f32)),
            v.unit,
            output::age(v.age_ms)
        ));
    }
    for problem in &s.unavailable {
        line(format!("  unavailable: {problem}"));
    }
    out
}
