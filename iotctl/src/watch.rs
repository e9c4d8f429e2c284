//! `iotctl watch`: the live one-screen summary `scripts/run.sh` shows while the pipeline
//! runs: readings per second at each hop, the ingester's Kafka lag, the open alerts and
//! the last value of every channel.
//!
//! Every figure is what a service says of itself, read each interval: the agents' health
//! on their retained MQTT `status` topics, the bridge's and the ingester's `/metrics`,
//! the `alerts` table, the `latest` hashes in Redis. A source that does not answer shows
//! as such on its line; the summary never stops for it.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use contracts::status::{GatewayStatus, AGENT_KIND};
use protocol::topic::TopicKind;
use redis::AsyncCommands;
use rumqttc::{Event, MqttOptions, Packet, QoS};
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
    let mut agents = agent_health(global);
    // The agents' retained statuses come right after subscribing: give them a moment so
    // the first screen already counts the agents.
    let _ = tokio::time::timeout(Duration::from_secs(1), agents.changed()).await;
    let interval = Duration::from_secs(args.interval);
    let tty = std::io::stdout().is_terminal() && !global.json;
    let mut previous: HashMap<&'static str, (Instant, f64)> = HashMap::new();
    let mut refreshes = 0;
    // One Ctrl-C listener for the whole run: a SIGINT arriving between two listeners
    // would be lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let summary = tokio::select! {
            summary = collect(global, &agents, &mut previous) => summary,
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

/// Per gateway status topic: its last two health reports, (readings so far, uptime in s),
/// and when the latest arrived.
type AgentReports = HashMap<String, ([(f64, f64); 2], Instant)>;

/// A gateway that has not reported for this long (agents report every 10 s by default)
/// no longer counts.
const AGENT_SILENT: Duration = Duration::from_secs(30);

/// Follows the agents' retained status messages in the background; the receiver always
/// holds what arrived so far.
fn agent_health(global: &Global) -> watch::Receiver<Result<AgentReports, String>> {
    let (tx, rx) = watch::channel(Ok(AgentReports::new()));
    let mut options = MqttOptions::new(
        services::mqtt_client_id("watch"),
        global.mqtt.host.clone(),
        global.mqtt.port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    let filter = protocol::topic::filter(&global.mqtt_prefix, TopicKind::Status)
        .map(|f| f.to_string())
        .unwrap_or_default();
    let address = format!("{}:{}", global.mqtt.host, global.mqtt.port);
    tokio::spawn(async move {
        let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
        let mut subscribed = false;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) if !subscribed => {
                    subscribed = client.subscribe(&filter, QoS::AtMostOnce).await.is_ok();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let topic = publish.topic.clone();
                    let report = health_of(&publish.payload);
                    tx.send_modify(|state| {
                        // Messages flow again after a failure: start afresh.
                        if state.is_err() {
                            *state = Ok(AgentReports::new());
                        }
                        let Ok(reports) = state else {
                            return;
                        };
                        match report {
                            // A gateway gone offline: not counted.
                            None => {
                                reports.remove(&topic);
                            }
                            Some(Health::Online { readings, uptime }) => {
                                let (samples, seen) = reports
                                    .entry(topic)
                                    .or_insert(([(readings, uptime); 2], Instant::now()));
                                if uptime > samples[1].1 {
                                    *samples = [samples[1], (readings, uptime)];
                                } else if uptime < samples[1].1 {
                                    // Restarted: its counters began again.
                                    *samples = [(readings, uptime); 2];
                                }
                                *seen = Instant::now();
                            }
                            Some(Health::NotAnAgent) => {}
                        }
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(format!("MQTT {address}: {e}")));
                    subscribed = false;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    });
    rx
}

/// What a retained status message says about an agent.
#[derive(Debug, PartialEq)]
enum Health {
    Online {
        readings: f64,
        uptime: f64,
    },
    /// A device's status, or something else on a status topic.
    NotAnAgent,
}

/// `None` for a gateway that is not online (offline, or its last will).
fn health_of(payload: &[u8]) -> Option<Health> {
    let Ok(status) = serde_json::from_slice::<GatewayStatus>(payload) else {
        return Some(Health::NotAnAgent);
    };
    if status.kind != AGENT_KIND {
        return Some(Health::NotAnAgent);
    }
    if status.state != "online" {
        return None;
    }
    match status.health {
        Some(health) => Some(Health::Online {
            readings: health.readings as f64,
            uptime: health.uptime_s as f64,
        }),
        None => Some(Health::NotAnAgent),
    }
}

async fn collect(
    global: &Global,
    agents: &watch::Receiver<Result<AgentReports, String>>,
    previous: &mut HashMap<&'static str, (Instant, f64)>,
) -> Summary {
    let mut summary = Summary {
        at_ms: service::clock::now_ms_i64(),
        ..Summary::default()
    };
    match &*agents.borrow() {
        Ok(reports) => {
            let live: Vec<&[(f64, f64); 2]> = reports
                .values()
                .filter(|(_, seen)| seen.elapsed() < AGENT_SILENT)
                .map(|(samples, _)| samples)
                .collect();
            summary.agents = live.len();
            let rates: Vec<f64> = live
                .iter()
                .filter(|[(r0, u0), (r1, u1)]| u1 > u0 && r1 >= r0)
                .map(|[(r0, u0), (r1, u1)]| (r1 - r0) / (u1 - u0))
                .collect();
            summary.agent_readings_per_s = (!rates.is_empty()).then(|| rates.iter().sum());
        }
        Err(e) => summary.unavailable.push(e.clone()),
    }
    let mut rate = |key: &'static str, total: f64| {
        let now = Instant::now();
        let per_s = previous.get(key).and_then(|(then, before)| {
            let seconds = now.duration_since(*then).as_secs_f64();
            (seconds > 0.0 && total >= *before).then(|| (total - before) / seconds)
        });
        previous.insert(key, (now, total));
        per_s
    };
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

/// The sum of every series of `name` in a Prometheus text exposition (all label sets).
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name{...} value` or `name value`, not a longer name sharing the prefix.
        let value = match rest.chars().next() {
            Some('{') => rest.rsplit_once('}').map(|(_, v)| v),
            Some(' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_add_every_label_set_of_exactly_that_name() {
        let text = "# HELP x\n\
                    ingester_consumer_lag{partition=\"0\"} 5\n\
                    ingester_consumer_lag{partition=\"1\"} 7\n\
                    ingester_consumer_lag_other 100\n\
                    bridge_messages_produced_total 42\n";
        assert_eq!(metric_sum(text, "ingester_consumer_lag"), Some(12.0));
        assert_eq!(
            metric_sum(text, "bridge_messages_produced_total"),
            Some(42.0)
        );
        assert_eq!(metric_sum(text, "missing"), None);
    }

    #[test]
    fn an_agent_status_gives_its_readings_and_uptime_and_others_nothing() {
        let online = br#"{"state":"online","kind":"edge-agent","boot_id":"ab","health":{"readings":120,"uptime_s":10}}"#;
        assert_eq!(
            health_of(online),
            Some(Health::Online {
                readings: 120.0,
                uptime: 10.0
            })
        );
        let offline = br#"{"state":"offline","kind":"edge-agent","boot_id":"ab"}"#;
        assert_eq!(health_of(offline), None);
        let device = br#"{"state":"online","gateway":"g"}"#;
        assert_eq!(health_of(device), Some(Health::NotAnAgent));
        assert_eq!(health_of(b"not json"), Some(Health::NotAnAgent));
    }
}
