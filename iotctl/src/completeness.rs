//! `iotctl completeness`: for each device and boot, how many readings the device made
//! (its highest sequence number + 1: a boot numbers its readings from 0), how many
//! PostgreSQL holds, which sequence numbers are missing and how many arrived late to
//! fill a hole (recovered), from the ingester's `reading_coverage`. A hole is a reading
//! that was made and has not (yet) arrived: dropped at the edge by the queue's byte cap
//! (the agents report exactly which, in their retained gateway status, read here from
//! the broker), or in transit, or lost: the rest.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use contracts::status::GatewayStatus;
use rumqttc::{Event, Packet, QoS};
use serde::Serialize;
use sqlx::types::chrono::{DateTime, Utc};

use crate::global::{self, Global, Outcome};
use crate::output::{self, emit_json, emit_table};
use crate::services;

/// How many missing ranges the table shows per boot (`--json` has them all).
const RANGES_SHOWN: usize = 4;

#[derive(Debug, Args)]
pub struct CompletenessArgs {
    /// Only this device (repeat for several).
    #[arg(long = "device", value_name = "ID", value_parser = global::device_id)]
    pub devices: Vec<String>,

    /// Boots that stored a reading this recently (e.g. 30m, 24h, 7d).
    #[arg(long, default_value = "24h", value_name = "AGE", value_parser = since)]
    pub since: Duration,
}

fn since(value: &str) -> Result<Duration, String> {
    let age = humantime::parse_duration(value).map_err(|e| format!("not a duration: {e}"))?;
    if age.is_zero() || age > Duration::from_secs(3650 * 86_400) {
        return Err("must be between 1 s and ten years".to_owned());
    }
    Ok(age)
}

#[derive(Debug, Serialize, PartialEq)]
struct BootCompleteness {
    device_id: String,
    boot_id: String,
    first_seen: String,
    last_stored: String,
    /// Highest sequence number stored + 1.
    expected: i64,
    stored: i64,
    missing: i64,
    /// Of the missing, those the device's agent reported giving up at its queue's byte
    /// cap (`null`: the agents' reports could not be read).
    dropped_at_edge: Option<i64>,
    /// Missing and not reported dropped: in transit, or lost (`null` as above).
    unexplained: Option<i64>,
    /// Readings that arrived after a higher one was stored: holes filled by a resend.
    recovered: i64,
    /// Half-open `[first, end)` ranges of missing sequence numbers, oldest first.
    missing_ranges: Vec<(i64, i64)>,
}

type CoverageRow = (
    String,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    i64,
    i64,
    i64,
    Vec<i64>,
    Vec<i64>,
);

/// How long the retained gateway statuses may take to arrive, and how long a quiet
/// broker means they all have.
const STATUS_WAIT: Duration = Duration::from_secs(3);
const STATUS_QUIET: Duration = Duration::from_millis(500);

/// What the agents reported dropping, per (device, boot as 16 hex digits): half-open
/// ranges, never acknowledged by the broker or acknowledged and given up all the same.
type DropReports = HashMap<(String, String), Vec<(i64, i64)>>;

pub async fn run(global: &Global, args: &CompletenessArgs) -> Result<Outcome> {
    let pool = services::postgres(global).await?;
    let seconds = args.since.as_secs_f64();
    let rows: Vec<CoverageRow> = sqlx::query_as(
        "WITH c AS ( \
           SELECT device_id, boot_id, first_seen, updated_at, seqs, recovered, \
                  int8multirange(int8range(0, upper(seqs))) - seqs AS holes \
             FROM reading_coverage \
            WHERE updated_at > now() - make_interval(secs => $1) \
              AND (cardinality($2::text[]) = 0 OR device_id = ANY($2))) \
         SELECT device_id, boot_id, first_seen, updated_at, upper(seqs), \
                (SELECT coalesce(sum(upper(r) - lower(r)), 0) FROM unnest(seqs) AS r)::bigint, \
                recovered, \
                ARRAY(SELECT lower(h) FROM unnest(holes) AS h ORDER BY 1), \
                ARRAY(SELECT upper(h) FROM unnest(holes) AS h ORDER BY 1) \
           FROM c ORDER BY device_id, first_seen",
    )
    .bind(seconds)
    .bind(&args.devices)
    .fetch_all(&pool)
    .await
    .context("reading reading_coverage (is the schema migrated?)")?;
    pool.close().await;

    let drops = match agent_drops(global).await {
        Ok(drops) => Some(drops),
        Err(e) => {
            eprintln!(
                "note: the agents' drop reports are unavailable, dropped at edge not shown ({e:#})"
            );
            None
        }
    };
    let boots: Vec<BootCompleteness> = rows
        .into_iter()
        .map(
            |(
                device_id,
                boot,
                first_seen,
                updated_at,
                expected,
                stored,
                recovered,
                lows,
                highs,
            )| {
                let boot_id = format!("{:016x}", boot as u64);
                let missing_ranges: Vec<(i64, i64)> = lows.into_iter().zip(highs).collect();
                let missing = expected - stored;
                let dropped_at_edge = drops.as_ref().map(|drops| {
                    drops
                        .get(&(device_id.clone(), boot_id.clone()))
                        .map_or(0, |dropped| overlap(&missing_ranges, dropped))
                });
                BootCompleteness {
                    device_id,
                    boot_id,
                    first_seen: output::time(&first_seen),
                    last_stored: output::time(&updated_at),
                    expected,
                    stored,
                    missing,
                    dropped_at_edge,
                    unexplained: dropped_at_edge.map(|dropped| missing - dropped),
                    recovered,
                    missing_ranges,
                }
            },
        )
        .collect();

    if global.json {
        emit_json(&boots);
        return Ok(Outcome::Done);
    }
    let mut table = output::table(
        &[
            "device",
            "boot",
            "first seen",
            "last stored",
            "expected",
            "stored",
            "missing",
            "dropped at edge",
            "unexplained",
            "recovered",
            "missing seqs",
        ],
        &[4, 5, 6, 7, 8, 9],
    );
    let unknown = |n: Option<i64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    for boot in &boots {
        table.add_row(vec![
            boot.device_id.clone(),
            boot.boot_id.clone(),
            boot.first_seen.clone(),
            boot.last_stored.clone(),
            boot.expected.to_string(),
            boot.stored.to_string(),
            boot.missing.to_string(),
            unknown(boot.dropped_at_edge),
            unknown(boot.unexplained),
            boot.recovered.to_string(),
            ranges_text(&boot.missing_ranges),
        ]);
    }
    emit_table(&table, "no readings stored in that time");
    Ok(Outcome::Done)
}

/// Reads every agent's retained gateway status and collects the readings it reported
/// dropping (its health's `dropped`; a clean stop leaves the last report in its
/// `offline` status). The report counts since the agent's start: drops before an
/// earlier restart are not in it and show as unexplained.
async fn agent_drops(global: &Global) -> Result<DropReports> {
    let filter = protocol::topic::filter(&global.mqtt_prefix, protocol::topic::TopicKind::Status)
        .context("the MQTT prefix")?
        .to_string();
    let options = services::mqtt_options(global, "completeness")?;
    let (client, mut events) = services::mqtt_connect(options).await?;
    client
        .subscribe(&filter, QoS::AtMostOnce)
        .await
        .context("subscribing to the gateways' status")?;
    let mut drops = DropReports::new();
    let deadline = tokio::time::Instant::now() + STATUS_WAIT;
    let mut subscribed = false;
    loop {
        let wait = if subscribed {
            STATUS_QUIET
        } else {
            STATUS_WAIT
        };
        let event = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + wait),
            events.poll(),
        )
        .await;
        match event {
            Err(_) if subscribed => break,
            Err(_) => anyhow::bail!("the broker did not confirm the subscription to {filter}"),
            Ok(Err(e)) => return Err(e).context("reading the gateways' status"),
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subscribed = true,
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                collect_drops(&publish.payload, &mut drops);
            }
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(drops)
}

/// Adds a gateway status's dropped ranges to `drops`; anything else on a status topic
/// (a device's status, a foreign or malformed message) adds nothing.
fn collect_drops(payload: &[u8], drops: &mut DropReports) {
    let Ok(GatewayStatus {
        health: Some(health),
        ..
    }) = serde_json::from_slice::<GatewayStatus>(payload)
    else {
        return;
    };
    for dropped in health.dropped {
        let ranges = drops.entry((dropped.device, dropped.boot)).or_default();
        for [start, end] in dropped.unsent.into_iter().chain(dropped.after_puback) {
            if let (Ok(start), Ok(end)) = (i64::try_from(start), i64::try_from(end)) {
                ranges.push((start, end));
            }
        }
    }
}

/// How many sequence numbers of `missing` (sorted, disjoint) some range of `dropped`
/// (any order, may overlap) covers.
fn overlap(missing: &[(i64, i64)], dropped: &[(i64, i64)]) -> i64 {
    let mut dropped = dropped.to_vec();
    dropped.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (start, end) in dropped {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut total = 0;
    for &(m_start, m_end) in missing {
        for &(d_start, d_end) in &merged {
            total += (m_end.min(d_end) - m_start.max(d_start)).max(0);
        }
    }
    total
}

/// `3-9, 20, 31-40 (+2 more)`: inclusive ranges, as an operator reads them.
fn ranges_text(ranges: &[(i64, i64)]) -> String {
    let mut parts: Vec<String> = ranges
        .iter()
        .take(RANGES_SHOWN)
        .map(|&(first, end)| {
            if end - first == 1 {
                first.to_string()
            } else {
                format!("{first}-{}", end - 1)
            }
        })
        .collect();
    if ranges.len() > RANGES_SHOWN {
        parts.push(format!("(+{} more)", ranges.len() - RANGES_SHOWN));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_read_as_inclusive_sequence_numbers() {
        assert_eq!(ranges_text(&[]), "");
        assert_eq!(ranges_text(&[(3, 10), (20, 21)]), "3-9, 20");
        let many: Vec<(i64, i64)> = (0..6).map(|i| (i * 10, i * 10 + 2)).collect();
        assert_eq!(ranges_text(&many), "0-1, 10-11, 20-21, 30-31, (+2 more)");
    }

    #[test]
    fn dropped_readings_count_only_where_they_are_missing() {
        assert_eq!(overlap(&[(100, 150)], &[]), 0);
        assert_eq!(overlap(&[(100, 150)], &[(90, 120), (110, 130)]), 30);
        assert_eq!(overlap(&[(0, 10), (20, 30)], &[(5, 25), (40, 50)]), 10);
    }

    #[test]
    fn drop_reports_are_read_from_gateway_status_and_nothing_else() {
        let mut drops = DropReports::new();
        let gateway = br#"{"state":"offline","kind":"edge-agent","health":{"dropped":[
            {"device":"furnace-01","boot":"0000000000000001","unsent":[[100,120]],"after_puback":[[120,130]]}]}}"#;
        collect_drops(gateway, &mut drops);
        collect_drops(br#"{"state":"online","gateway":"g"}"#, &mut drops);
        collect_drops(b"\xff not json", &mut drops);
        collect_drops(br#"{"health":{"dropped":[{"device":"x"}]}}"#, &mut drops);
        assert_eq!(drops.len(), 1);
        assert_eq!(
            drops[&("furnace-01".to_owned(), "0000000000000001".to_owned())],
            vec![(100, 120), (120, 130)]
        );
    }

    #[test]
    fn since_takes_a_human_duration() {
        assert_eq!(since("24h"), Ok(Duration::from_secs(86_400)));
        assert!(since("0s").is_err());
        assert!(since("yesterday").is_err());
    }
}
