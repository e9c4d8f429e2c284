//! `iotctl completeness`: for each device and boot, how many readings the device made
//! (its highest sequence number + 1: a boot numbers its readings from 0), how many
//! PostgreSQL holds, and which sequence numbers are missing, from the ingester's
//! `reading_coverage`. A hole is a reading that was made and has not (yet) arrived:
//! in transit, dropped at the edge by the queue's byte cap, or lost.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use sqlx::types::chrono::{DateTime, Utc};

use crate::cli::{self, Global, Outcome};
use crate::output::{self, emit_json, emit_table};
use crate::services;

/// How many missing ranges the table shows per boot (`--json` has them all).
const RANGES_SHOWN: usize = 4;

#[derive(Debug, Args)]
pub struct CompletenessArgs {
    /// Only this device (repeat for several).
    #[arg(long = "device", value_name = "ID", value_parser = cli::device_id)]
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
    Vec<i64>,
    Vec<i64>,
);

pub async fn run(global: &Global, args: &CompletenessArgs) -> Result<Outcome> {
    let pool = services::postgres(global).await?;
    let seconds = args.since.as_secs_f64();
    let rows: Vec<CoverageRow> = sqlx::query_as(
        "WITH c AS ( \
           SELECT device_id, boot_id, first_seen, updated_at, seqs, \
                  int8multirange(int8range(0, upper(seqs))) - seqs AS holes \
             FROM reading_coverage \
            WHERE updated_at > now() - make_interval(secs => $1) \
              AND (cardinality($2::text[]) = 0 OR device_id = ANY($2))) \
         SELECT device_id, boot_id, first_seen, updated_at, upper(seqs), \
                (SELECT coalesce(sum(upper(r) - lower(r)), 0) FROM unnest(seqs) AS r)::bigint, \
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

    let boots: Vec<BootCompleteness> = rows
        .into_iter()
        .map(
            |(device_id, boot, first_seen, updated_at, expected, stored, lows, highs)| {
                BootCompleteness {
                    device_id,
                    boot_id: format!("{:016x}", boot as u64),
                    first_seen: output::time(&first_seen),
                    last_stored: output::time(&updated_at),
                    expected,
                    stored,
                    missing: expected - stored,
                    missing_ranges: lows.into_iter().zip(highs).collect(),
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
            "missing seqs",
        ],
        &[4, 5, 6],
    );
    for boot in &boots {
        table.add_row(vec![
            boot.device_id.clone(),
            boot.boot_id.clone(),
            boot.first_seen.clone(),
            boot.last_stored.clone(),
            boot.expected.to_string(),
            boot.stored.to_string(),
            boot.missing.to_string(),
            ranges_text(&boot.missing_ranges),
        ]);
    }
    emit_table(&table, "no readings stored in that time");
    Ok(Outcome::Done)
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
    fn since_takes_a_human_duration() {
        assert_eq!(since("24h"), Ok(Duration::from_secs(86_400)));
        assert!(since("0s").is_err());
        assert!(since("yesterday").is_err());
    }
}
