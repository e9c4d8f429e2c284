//! The state derived from the rows, held against them: the pipeline's own completeness
//! report, the hourly statistics, the Redis latest values, and the readings the agents
//! reported dropping.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result};
use contracts::redis::{LatestValue, RedisKeys, DEFAULT_PREFIX};
use redis::AsyncCommands;
use sqlx::PgPool;

use super::Stored;
use crate::deployment::BootCompleteness;
use crate::observer::Observed;
use crate::workload;

/// Holds the pipeline's completeness report against the stored rows, boot by boot: the
/// same readings stored, the same highest, the same holes below it. Each disagreement,
/// named.
pub(super) fn completeness_against_rows(
    stored: &Stored,
    report: &[BootCompleteness],
) -> Vec<String> {
    let boots: BTreeMap<(String, String), &[u64]> = stored
        .boots()
        .map(|((device, boot), seqs)| ((device.clone(), format!("{:016x}", *boot as u64)), seqs))
        .collect();
    let mut mismatches = Vec::new();
    let mut reported: HashSet<(String, String)> = HashSet::new();
    for entry in report {
        let key = (entry.device_id.clone(), entry.boot_id.clone());
        let name = format!("{} boot {}", entry.device_id, entry.boot_id);
        if !reported.insert(key.clone()) {
            mismatches.push(format!("{name}: reported twice"));
            continue;
        }
        let Some(&seqs) = boots.get(&key) else {
            mismatches.push(format!("{name}: reported, nothing stored"));
            continue;
        };
        let expected = seqs.last().map_or(0, |highest| highest + 1);
        let mut holes: Vec<(u64, u64)> = Vec::new();
        let mut next = 0;
        for &seq in seqs.iter() {
            if seq > next {
                holes.push((next, seq));
            }
            next = seq + 1;
        }
        let rows = (expected, seqs.len() as u64, expected - seqs.len() as u64);
        let said = (entry.expected, entry.stored, entry.missing);
        if rows != said {
            mismatches.push(format!(
                "{name}: (expected, stored, missing) {said:?}, the rows {rows:?}"
            ));
        }
        if holes != entry.missing_ranges {
            mismatches.push(format!(
                "{name}: missing {:?}, the rows {holes:?}",
                entry.missing_ranges
            ));
        }
    }
    for (device, boot) in boots.keys() {
        if !reported.contains(&(device.clone(), boot.clone())) {
            mismatches.push(format!("{device} boot {boot}: stored, not reported"));
        }
    }
    mismatches
}

/// Compares `device_stats_hourly` with the same aggregates recomputed from the rows
/// (finite values only, as the ingester folds them). Sums are compared to a relative
/// 1e-9: the ingester adds them batch by batch, the recount in one go.
pub(super) async fn stats_against_recount(db: &PgPool) -> Result<(u64, Vec<String>)> {
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM device_stats_hourly")
        .fetch_one(db)
        .await
        .context("counting device_stats_hourly")?;
    let mismatches: Vec<String> = sqlx::query_scalar(
        "WITH recount AS (
             SELECT device_id, channel_id,
                    date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS hour,
                    count(*) AS count, min(value::float8) AS min, max(value::float8) AS max,
                    sum(value::float8) AS sum, sum(value::float8 * value::float8) AS sum_sq
               FROM sensor_readings
              WHERE value NOT IN ('NaN', 'Infinity', '-Infinity')
              GROUP BY 1, 2, 3)
         SELECT format('%s/%s %s: count %s vs %s, min %s vs %s, max %s vs %s, sum %s vs %s',
                       coalesce(r.device_id, s.device_id), coalesce(r.channel_id, s.channel_id),
                       coalesce(r.hour, s.hour), r.count, s.count, r.min, s.min, r.max, s.max,
                       r.sum, s.sum)
           FROM recount r
           FULL JOIN device_stats_hourly s
             ON (s.device_id, s.channel_id, s.hour) = (r.device_id, r.channel_id, r.hour)
          WHERE r.count IS DISTINCT FROM s.count
             OR r.min IS DISTINCT FROM s.min
             OR r.max IS DISTINCT FROM s.max
             OR abs(r.sum - s.sum) > 1e-9 * greatest(1, abs(r.sum))
             OR abs(r.sum_sq - s.sum_sq) > 1e-9 * greatest(1, abs(r.sum_sq))
          LIMIT 10",
    )
    .fetch_all(db)
    .await
    .context("recounting the hourly statistics")?;
    Ok((groups as u64, mismatches))
}

/// Compares each channel's Redis latest value with the newest row, in the order the
/// ingester's script keeps: reading time, then boot id as unsigned bytes, then seq.
pub(super) async fn redis_against_rows(db: &PgPool, redis_url: &str) -> Result<(u64, Vec<String>)> {
    let client = redis::Client::open(redis_url).context("Redis URL")?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let mut channels = 0;
    let mut mismatches = Vec::new();
    for device in workload::devices() {
        // The pipeline's order (service::clock): the boot first seen later, then the
        // sequence number; never the device's clock.
        let newest: Vec<(i16, i64, i64, i64)> = sqlx::query_as(
            "SELECT DISTINCT ON (r.channel_id) r.channel_id,
                    round(extract(epoch FROM r.ts) * 1000)::bigint, r.boot_id, r.seq
               FROM sensor_readings r
               JOIN reading_coverage c USING (device_id, boot_id)
              WHERE r.device_id = $1
              ORDER BY r.channel_id, c.first_seen DESC,
                       r.boot_id # (-9223372036854775808)::bigint DESC, r.seq DESC",
        )
        .bind(device)
        .fetch_all(db)
        .await
        .context("reading the newest rows")?;
        let latest: BTreeMap<String, String> = redis
            .hgetall(RedisKeys::new(DEFAULT_PREFIX).latest(device))
            .await
            .context("reading the latest values from Redis")?;
        for (channel, ts, boot, seq) in newest {
            channels += 1;
            let want = (ts, format!("{:016x}", boot as u64), seq);
            let got = latest
                .get(&channel.to_string())
                .and_then(|json| serde_json::from_str::<LatestValue>(json).ok())
                .map(|v| (v.ts, v.boot, v.seq));
            if got.as_ref() != Some(&want) {
                mismatches.push(format!(
                    "{device}/{channel}: Redis {got:?}, newest row {want:?}"
                ));
            }
        }
    }
    Ok((channels, mismatches))
}

/// The readings the agents reported dropping at their cap, each with whether the broker
/// had acknowledged it, from the newest health report of each gateway.
pub(super) fn reported_drops(observed: &Observed) -> Result<BTreeMap<(String, i64, u64), bool>> {
    let mut drops = BTreeMap::new();
    for (gateway, health) in &observed.health {
        for span in &health.dropped {
            let boot = u64::from_str_radix(&span.boot, 16).with_context(|| {
                format!("{gateway}: a dropped span with a malformed boot: {span:?}")
            })? as i64;
            for (list, acknowledged) in [(&span.unsent, false), (&span.after_puback, true)] {
                for &[start, end] in list {
                    for seq in start..end {
                        drops.insert((span.device.clone(), boot, seq), acknowledged);
                    }
                }
            }
        }
    }
    Ok(drops)
}
