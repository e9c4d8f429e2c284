//! What the Redis sink tests share: rows and their live form, a connection to the
//! stack's Redis and the cleanup of a test's keys, and the latest hash and recent stream
//! read back.

use std::collections::BTreeMap;

use anyhow::Context;
use cloud_ingester::redis_sink::{LiveRow, RedisSinkConfig};
use cloud_ingester::rows::Row;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

pub fn row(device: &str, channel: i16, ts_ms: i64, boot_id: i64, seq: i64, value: f32) -> Row {
    Row {
        device_id: device.to_owned(),
        boot_id,
        seq,
        ts_ms,
        value,
        channel_id: channel,
        quality: 0,
        clock_synced: true,
    }
}

/// When PostgreSQL first saw the boot of the tests that use one boot at a time.
pub const SEEN_US: i64 = 1_700_000_000_000_000;

/// Committed rows as the pipeline hands them over, every boot first seen at `SEEN_US`.
pub fn live(rows: &[Row]) -> Vec<LiveRow> {
    live_seen(rows, |_| SEEN_US)
}

/// Committed rows, each boot first seen at `seen(boot)`.
pub fn live_seen(rows: &[Row], seen: impl Fn(i64) -> i64) -> Vec<LiveRow> {
    rows.iter()
        .map(|row| LiveRow {
            row: row.clone(),
            boot_seen_us: seen(row.boot_id),
        })
        .collect()
}

pub fn config(url: &str, prefix: &str) -> RedisSinkConfig {
    RedisSinkConfig::new(url).with_prefix(prefix)
}

pub async fn connection() -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(testkit::redis_url())?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// Deletes every key under `{prefix}:`.
pub async fn cleanup(prefix: &str) -> anyhow::Result<()> {
    let mut con = connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await?;
        if !keys.is_empty() {
            let _: () = con.del(&keys).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A latest-hash field, parsed.
#[derive(Debug, PartialEq)]
pub struct Latest {
    pub ts: i64,
    pub v: Option<f64>,
    pub q: i64,
    pub boot: String,
    pub seq: i64,
    pub synced: bool,
    pub boot_seen_us: Option<i64>,
}

pub async fn latest(
    con: &mut MultiplexedConnection,
    prefix: &str,
    device: &str,
) -> anyhow::Result<BTreeMap<i16, Latest>> {
    let hash: BTreeMap<String, String> = con.hgetall(format!("{prefix}:latest:{device}")).await?;
    let mut out = BTreeMap::new();
    for (field, json) in hash {
        let value: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("field {field}: {json}"))?;
        let parsed = Latest {
            ts: value["ts"].as_i64().context("ts")?,
            v: value["v"].as_f64(),
            q: value["q"].as_i64().context("q")?,
            boot: value["boot"].as_str().context("boot")?.to_owned(),
            seq: value["seq"].as_i64().context("seq")?,
            synced: value["synced"].as_bool().context("synced")?,
            boot_seen_us: value["boot_seen_us"].as_i64(),
        };
        out.insert(field.parse()?, parsed);
    }
    Ok(out)
}

pub fn expected_latest(row: &Row) -> Latest {
    expected_latest_seen(row, SEEN_US)
}

pub fn expected_latest_seen(row: &Row, boot_seen_us: i64) -> Latest {
    Latest {
        ts: row.ts_ms,
        v: Some(f64::from(row.value)),
        q: i64::from(row.quality),
        boot: format!("{:016x}", row.boot_id as u64),
        seq: row.seq,
        synced: row.clock_synced,
        boot_seen_us: Some(boot_seen_us),
    }
}

/// The newest reading per channel in the pipeline's order: (when its boot was first
/// seen, boot as unsigned, seq); no timestamp.
pub fn newest_per_channel<'a>(
    rows: impl IntoIterator<Item = &'a Row>,
    seen: impl Fn(i64) -> i64,
) -> BTreeMap<i16, &'a Row> {
    let order = |row: &Row| (seen(row.boot_id), row.boot_id as u64, row.seq);
    let mut out: BTreeMap<i16, &Row> = BTreeMap::new();
    for row in rows {
        let kept = out.entry(row.channel_id).or_insert(row);
        if order(row) > order(kept) {
            *kept = row;
        }
    }
    out
}

pub type StreamEntry = (String, BTreeMap<String, String>);

pub async fn stream(
    con: &mut MultiplexedConnection,
    prefix: &str,
    device: &str,
) -> anyhow::Result<Vec<StreamEntry>> {
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:recent:{device}"))
        .arg("-")
        .arg("+")
        .query_async(con)
        .await?;
    Ok(entries)
}
