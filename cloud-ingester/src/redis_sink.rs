//! The Redis writer: after each PostgreSQL commit, the batch's readings are mirrored
//! into Redis for real-time readers (dashboards, Redis Commander, the operator CLI).
//!
//! PostgreSQL stays the system of record. Redis holds only what a live view needs, and
//! it is written in a way that replays, duplicates, out-of-order batches and device
//! clocks cannot corrupt: the "latest value" and "last seen" never move backwards, in
//! the pipeline's clock-free order (`service::clock`): a device's boot first seen later
//! by PostgreSQL is the newer, and within a boot the sequence number decides. The caller
//! keeps readings dated beyond `clock.max_ahead` out, so a wrong clock cannot pin them.
//! A Redis outage costs freshness, never ingestion: every call gives up after a bounded
//! time with a [`RedisSinkError`], the caller keeps storing into PostgreSQL, and the next
//! successful batch brings Redis forward again (the connection reconnects by itself).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use contracts::redis::{LatestValue, RedisKeys};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use crate::rows::Row;

pub use contracts::redis::DEFAULT_PREFIX;

/// The Lua script run once per batch (one `EVALSHA`, one round trip).
///
/// KEYS, four per device `d` (1-based): `latest` = KEYS[4d-3], `recent` = KEYS[4d-2],
/// `last_seen` = KEYS[4d-1], `last_seen_order` = KEYS[4d].
/// ARGV: [1] stream MAXLEN, [2] device count, then per device:
///   last_seen ts, last_seen TTL in ms (0 = leave last_seen alone), its order (boot first
///   seen µs, boot hex, seq), n_latest, n_stream,
///   n_latest x (field, boot first seen µs, boot hex, seq, json),
///   n_stream x (ts, channel, value, quality) in ascending ts order.
/// Returns {latest advanced, latest stale, stream entries appended, last_seen advanced}.
///
/// Order of readings (`newer`): within a boot by seq; across boots by when PostgreSQL
/// first saw the boot, then boot id (16 lowercase hex digits, the boot id's bytes) for
/// boots first seen by one transaction. So the stored latest value is the maximum by that
/// order whatever the arrival order, and no timestamp takes part. A value stored without
/// `boot_seen_us` (before this order) counts as the oldest boot. Lua numbers are doubles:
/// µs (< 2^53 until 2255) and seq (< 2^53 in any realistic boot) compare exactly.
const SCRIPT: &str = r#"
local function newer(seen, boot, seq, oseen, oboot, oseq)
  if boot == oboot then
    return seq > oseq
  end
  return seen > oseen or (seen == oseen and boot > oboot)
end
local maxlen = ARGV[1]
local ndev = tonumber(ARGV[2])
local i = 3
local advanced, stale, appended, seen = 0, 0, 0, 0
for d = 1, ndev do
  local latest_key, recent_key = KEYS[4 * d - 3], KEYS[4 * d - 2]
  local seen_key, order_key = KEYS[4 * d - 1], KEYS[4 * d]
  local seen_ts = ARGV[i]
  local seen_ttl = tonumber(ARGV[i + 1])
  -- As sent, to store, and as numbers, to compare.
  local seen_order = ARGV[i + 2] .. ' ' .. ARGV[i + 3] .. ' ' .. ARGV[i + 4]
  local seen_boot_seen, seen_boot, seen_seq =
    tonumber(ARGV[i + 2]), ARGV[i + 3], tonumber(ARGV[i + 4])
  local n_latest = tonumber(ARGV[i + 5])
  local n_stream = tonumber(ARGV[i + 6])
  i = i + 7
  for _ = 1, n_latest do
    local field, boot_seen, boot, seq, json =
      ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3]), ARGV[i + 4]
    i = i + 5
    local is_newer = true
    local old = redis.call('HGET', latest_key, field)
    if old then
      local ok, o = pcall(cjson.decode, old)
      if ok and type(o) == 'table' then
        local oseen = type(o.boot_seen_us) == 'number' and o.boot_seen_us or -1
        local oboot = type(o.boot) == 'string' and o.boot or ''
        local oseq = type(o.seq) == 'number' and o.seq or -1
        is_newer = newer(boot_seen, boot, seq, oseen, oboot, oseq)
      end
    end
    if is_newer then
      redis.call('HSET', latest_key, field, json)
      advanced = advanced + 1
    else
      stale = stale + 1
    end
  end
  if n_stream > 0 then
    local floor = -1
    local top = redis.call('XREVRANGE', recent_key, '+', '-', 'COUNT', 1)
    if top[1] then
      floor = tonumber(string.match(top[1][1], '^(%d+)')) or -1
    end
    for _ = 1, n_stream do
      local ts = ARGV[i]
      if tonumber(ts) > floor then
        redis.call('XADD', recent_key, 'MAXLEN', '~', maxlen, ts .. '-*',
          'ch', ARGV[i + 1], 'ts', ts, 'v', ARGV[i + 2], 'q', ARGV[i + 3])
        appended = appended + 1
      end
      i = i + 4
    end
  end
  if seen_ttl > 0 then
    local is_newer = true
    local old = redis.call('GET', order_key)
    if old and redis.call('EXISTS', seen_key) == 1 then
      local oseen, oboot, oseq = string.match(old, '^(%-?%d+) (%x+) (%d+)$')
      if oseen then
        is_newer = newer(seen_boot_seen, seen_boot, seen_seq,
          tonumber(oseen), oboot, tonumber(oseq))
      end
    end
    if is_newer then
      redis.call('SET', seen_key, seen_ts, 'PX', seen_ttl)
      redis.call('SET', order_key, seen_order, 'PX', seen_ttl)
      seen = seen + 1
    end
  end
end
return {advanced, stale, appended, seen}
"#;

/// Settings of a [`RedisSink`]; [`RedisSinkConfig::new`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct RedisSinkConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// First segment of every key. Default [`DEFAULT_PREFIX`].
    pub prefix: String,
    /// Approximate cap of each device's `recent` stream (`XADD MAXLEN ~`). Default 1000.
    pub stream_maxlen: usize,
    /// At most this many readings per device per batch go into the stream (the newest
    /// ones of the batch). Default 100.
    pub stream_per_device_per_batch: usize,
    /// Soft cap on stream entries per batch over all devices: with many devices the
    /// per-device share shrinks to `stream_per_batch / devices`, but never below one.
    /// Default 2000. Keeps the one round trip small whatever the batch size.
    pub stream_per_batch: usize,
    /// TTL of `last_seen`, counted from the reading's time when the device's clock is
    /// synchronised, from now otherwise. Default 120 s.
    pub last_seen_ttl: Duration,
    /// Per connection attempt. Default 1 s.
    pub connection_timeout: Duration,
    /// Per command (the batch script included). Default 2 s.
    pub response_timeout: Duration,
    /// Reconnection attempts per connect (exponential backoff, 100 ms up to 1 s).
    /// Default 1.
    pub connection_retries: usize,
    /// Hard bound on every public call, whatever happens inside. Default 5 s.
    pub operation_timeout: Duration,
}

impl RedisSinkConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            stream_maxlen: 1000,
            stream_per_device_per_batch: 100,
            stream_per_batch: 2000,
            last_seen_ttl: Duration::from_secs(120),
            connection_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            connection_retries: 1,
            operation_timeout: Duration::from_secs(5),
        }
    }

    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// Errors of the Redis writer. None of them is fatal to ingestion: log, count, and
/// carry on with the next batch.
#[derive(Debug, thiserror::Error)]
pub enum RedisSinkError {
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(#[source] RedisError),
    #[error("the Redis sink must be created inside a Tokio runtime")]
    NoRuntime,
    #[error("invalid Redis sink configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("Redis {op} failed: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: RedisError,
    },
    #[error("Redis {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("could not encode a latest value as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("unexpected reply from the Redis batch script: {0}")]
    UnexpectedReply(String),
}

/// What one [`RedisSink::write_batch`] changed. "Latest" counts are per (device,
/// channel) after the batch has been reduced to its newest reading per pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Latest fields that moved forward (or were created).
    pub latest_advanced: u64,
    /// Latest fields left alone because Redis already held a reading as new or newer
    /// (replays, out-of-order batches).
    pub latest_stale: u64,
    /// Entries appended to `recent` streams.
    pub stream_appended: u64,
    /// `last_seen` keys that moved forward (their TTL was set anew).
    pub last_seen_advanced: u64,
}

/// Writes batches of committed readings, and the open alerts, into Redis.
///
/// It exists so real-time readers never query PostgreSQL for "now": they read small,
/// always-current keys. Key layout (`{prefix}` defaults to `plant`):
///
/// - `{prefix}:latest:{device}` — hash, field = channel number (`"3"`), value = JSON
///   `{"ts":1700000000010,"v":851.25,"q":0,"boot":"ff00000000000001","seq":42,"synced":true,"boot_seen_us":1700000000000123}`
///   (ts in ms since the epoch, `v` the value or `null` when not finite, `q` the quality
///   bits, `boot` the boot id's 8 bytes in hex, `seq` the sequence number, `synced`
///   whether the device's clock was synchronised, `boot_seen_us` when PostgreSQL first
///   saw the boot, µs since the epoch). Updated by an atomic compare in Lua: a field is
///   replaced only by a reading later in the order of [`LiveRow::is_newer_than`] (boot
///   first seen, then seq), so it never moves backwards, an older boot's backlog never
///   replaces a newer boot's values, and replays are no-ops. Its `ts` is data: it takes
///   no part in the order.
/// - `{prefix}:recent:{device}` — stream, entry id `{ts}-{n}` (the reading's time, so
///   `XRANGE key <from_ms> <to_ms>` selects by reading time), fields `ch`, `ts`, `v`,
///   `q`; capped with `MAXLEN ~ stream_maxlen`. Per batch only the newest
///   `stream_per_device_per_batch` readings of each device are appended (a catching-up
///   20k-row batch must not become 20k `XADD`s), and only those later than the stream's
///   last entry (so a replay appends nothing and the stream stays in time order; a
///   reading with the same millisecond as the last entry of an earlier batch is skipped).
/// - `{prefix}:last_seen:{device}` — string, the time in ms of the device's newest
///   reading (in the same order as `latest`); expires `last_seen_ttl` after that reading
///   (after now for unsynchronised clocks, whose time cannot date it), so an offline
///   device's key disappears. Never moves backwards while it exists; a reading already
///   older than the TTL does not create it. `{prefix}:last_seen_order:{device}` beside
///   it, with the same expiry, holds that reading's order (`{boot_seen_us} {boot} {seq}`)
///   for the script to compare with.
/// - `{prefix}:alerts:open` — hash, field = alert id, value = the alert's JSON.
///
/// Each batch is one `EVALSHA` (the script is loaded on first use and reloaded when
/// Redis answers `NOSCRIPT`, e.g. after a restart). The connection is a
/// [`ConnectionManager`], which reconnects by itself; every call is bounded by
/// `operation_timeout`. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct RedisSink {
    con: ConnectionManager,
    script: Script,
    keys: RedisKeys,
    stream_maxlen: usize,
    stream_per_device: usize,
    stream_per_batch: usize,
    last_seen_ttl_ms: i64,
    operation_timeout: Duration,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("prefix", &self.keys.prefix())
            .field("stream_maxlen", &self.stream_maxlen)
            .finish_non_exhaustive()
    }
}

/// The newest reading of one (device, channel) and the readings for the stream.
struct DeviceWork<'a> {
    latest: BTreeMap<i16, &'a LiveRow>,
    rows: Vec<&'a Row>,
}

/// A committed reading with what orders it among its device's other boots: when
/// PostgreSQL first saw its boot (`reading_coverage.first_seen`, µs since the epoch,
/// [`crate::coverage::Held`]). Durable and written once, so every instance and every
/// restart orders boots alike, and no device clock takes part.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRow {
    pub row: Row,
    pub boot_seen_us: i64,
}

impl LiveRow {
    /// The pipeline's order of a device's readings, as the script applies it: within a
    /// boot the higher seq; across boots the one first seen later, and for boots first
    /// seen by one transaction the higher boot id as unsigned.
    pub fn is_newer_than(&self, other: &LiveRow) -> bool {
        if self.row.boot_id == other.row.boot_id {
            self.row.seq > other.row.seq
        } else {
            (self.boot_seen_us, self.row.boot_id as u64)
                > (other.boot_seen_us, other.row.boot_id as u64)
        }
    }
}

/// The stream's order: reading time (its entry ids are times), then identity.
fn time_key(row: &Row) -> (i64, u64, i64) {
    (row.ts_ms, row.boot_id as u64, row.seq)
}

fn boot_hex(row: &Row) -> String {
    format!("{:016x}", row.boot_id as u64)
}

impl RedisSink {
    /// A sink with the default settings and the given key prefix.
    pub fn new(url: &str, prefix: &str) -> Result<Self, RedisSinkError> {
        Self::with_config(RedisSinkConfig::new(url).with_prefix(prefix))
    }

    /// [`RedisSink::new`], then one `PING` so a wrong URL shows in the log at start-up.
    /// An unreachable Redis is logged, not returned: ingestion must start without it, and
    /// the sink connects when Redis comes back. Errors only for invalid settings.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RedisSinkError> {
        let sink = Self::new(url, prefix)?;
        if let Err(e) = sink.ping().await {
            tracing::warn!(error = %e, "Redis is not reachable yet; will retry on each batch");
        }
        Ok(sink)
    }

    /// Does not connect: the connection is made on first use, so a Redis that is down
    /// at start-up delays nothing. Must be called inside a Tokio runtime.
    pub fn with_config(config: RedisSinkConfig) -> Result<Self, RedisSinkError> {
        if config.prefix.is_empty() {
            return Err(RedisSinkError::InvalidConfig("the key prefix is empty"));
        }
        if config.stream_maxlen == 0 {
            return Err(RedisSinkError::InvalidConfig("stream_maxlen is 0"));
        }
        let last_seen_ttl_ms = i64::try_from(config.last_seen_ttl.as_millis())
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or(RedisSinkError::InvalidConfig(
                "last_seen_ttl must be between 1 ms and i64::MAX ms",
            ))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RedisSinkError::NoRuntime);
        }
        let client =
            redis::Client::open(config.url.as_str()).map_err(RedisSinkError::InvalidUrl)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connection_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(config.connection_retries)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let con =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|source| {
                RedisSinkError::Redis {
                    op: "connection set-up",
                    source,
                }
            })?;
        Ok(Self {
            con,
            script: Script::new(SCRIPT),
            keys: RedisKeys::new(config.prefix),
            stream_maxlen: config.stream_maxlen,
            stream_per_device: config.stream_per_device_per_batch,
            stream_per_batch: config.stream_per_batch,
            last_seen_ttl_ms,
            operation_timeout: config.operation_timeout,
        })
    }

    /// The key layout this sink writes, under its prefix.
    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    /// Mirrors one committed batch into Redis in a single round trip. `now_ms` (ms since
    /// the epoch) dates the `last_seen` expiry. An empty batch sends nothing. The caller
    /// leaves out readings dated beyond `clock.max_ahead`: this writer trusts no clock
    /// for order, but the stream and `last_seen` show reading times.
    pub async fn write_batch(
        &self,
        rows: &[LiveRow],
        now_ms: i64,
    ) -> Result<WriteOutcome, RedisSinkError> {
        if rows.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let mut devices: BTreeMap<&str, DeviceWork<'_>> = BTreeMap::new();
        for live in rows {
            let row = &live.row;
            let work = devices
                .entry(row.device_id.as_str())
                .or_insert_with(|| DeviceWork {
                    latest: BTreeMap::new(),
                    rows: Vec::new(),
                });
            work.latest
                .entry(row.channel_id)
                .and_modify(|kept| {
                    if live.is_newer_than(kept) {
                        *kept = live;
                    }
                })
                .or_insert(live);
            work.rows.push(row);
        }

        let per_device = if self.stream_per_device == 0 || self.stream_per_batch == 0 {
            0
        } else {
            self.stream_per_device
                .min(self.stream_per_batch / devices.len())
                .max(1)
        };

        let mut invocation = self.script.prepare_invoke();
        invocation.arg(self.stream_maxlen).arg(devices.len());
        for (device, work) in &mut devices {
            invocation
                .key(self.keys.latest(device))
                .key(self.keys.recent(device))
                .key(self.keys.last_seen(device))
                .key(self.keys.last_seen_order(device));

            // The device's newest reading dates last_seen.
            let newest = work.latest.values().copied().reduce(|kept, live| {
                if live.is_newer_than(kept) {
                    live
                } else {
                    kept
                }
            });
            let (seen_ttl_ms, seen) = match newest {
                Some(live) => {
                    let row = &live.row;
                    let age = if row.clock_synced {
                        now_ms.saturating_sub(row.ts_ms).max(0)
                    } else {
                        0
                    };
                    (self.last_seen_ttl_ms.saturating_sub(age).max(0), Some(live))
                }
                None => (0, None),
            };

            // The newest `per_device` readings, oldest first, for the stream.
            let stream_rows: &mut [&Row] = if work.rows.len() > per_device {
                let cut = work.rows.len() - per_device;
                work.rows
                    .select_nth_unstable_by_key(cut, |row| time_key(row));
                &mut work.rows[cut..]
            } else {
                &mut work.rows[..]
            };
            stream_rows.sort_unstable_by_key(|row| time_key(row));
            // Stream ids are unsigned ms; a negative time cannot be one.
            let stream_rows: Vec<&Row> = stream_rows
                .iter()
                .copied()
                .filter(|row| row.ts_ms >= 0)
                .collect();

            match seen {
                Some(live) => invocation
                    .arg(live.row.ts_ms)
                    .arg(seen_ttl_ms)
                    .arg(live.boot_seen_us)
                    .arg(boot_hex(&live.row))
                    .arg(live.row.seq),
                // Not used by the script with a TTL of 0.
                None => invocation.arg(0).arg(0).arg(0).arg("0").arg(0),
            };
            invocation.arg(work.latest.len()).arg(stream_rows.len());
            for (channel, live) in &work.latest {
                let row = &live.row;
                let value = LatestValue {
                    ts: row.ts_ms,
                    v: Some(row.value),
                    q: row.quality,
                    boot: boot_hex(row),
                    seq: row.seq,
                    synced: row.clock_synced,
                    boot_seen_us: Some(live.boot_seen_us),
                };
                let json = serde_json::to_string(&value)?;
                invocation
                    .arg(channel.to_string())
                    .arg(live.boot_seen_us)
                    .arg(value.boot)
                    .arg(row.seq)
                    .arg(json);
            }
            for row in stream_rows {
                invocation
                    .arg(row.ts_ms)
                    .arg(row.channel_id)
                    .arg(row.value.to_string())
                    .arg(row.quality);
            }
        }

        let mut con = self.con.clone();
        let reply: Vec<i64> = self
            .bounded("batch script", invocation.invoke_async(&mut con))
            .await?;
        let count = |i: usize| {
            reply
                .get(i)
                .and_then(|&n| u64::try_from(n).ok())
                .ok_or_else(|| RedisSinkError::UnexpectedReply(format!("{reply:?}")))
        };
        Ok(WriteOutcome {
            latest_advanced: count(0)?,
            latest_stale: count(1)?,
            stream_appended: count(2)?,
            last_seen_advanced: count(3)?,
        })
    }

    /// Records (or replaces) an open alert in `{prefix}:alerts:open`.
    pub async fn set_open_alert(&self, alert_id: i64, json: &str) -> Result<(), RedisSinkError> {
        let mut con = self.con.clone();
        let key = self.keys.open_alerts();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&key).arg(alert_id).arg(json);
        self.bounded("HSET open alert", cmd.exec_async(&mut con))
            .await
    }

    /// Removes an alert from the open set; true if it was there.
    pub async fn clear_alert(&self, alert_id: i64) -> Result<bool, RedisSinkError> {
        let mut con = self.con.clone();
        let key = self.keys.open_alerts();
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&key).arg(alert_id);
        let removed: i64 = self
            .bounded("HDEL open alert", cmd.query_async(&mut con))
            .await?;
        Ok(removed > 0)
    }

    /// Replaces the whole open-alert hash with `alerts` (id, JSON), atomically.
    pub async fn replace_open_alerts(
        &self,
        alerts: &[(i64, String)],
    ) -> Result<(), RedisSinkError> {
        let mut con = self.con.clone();
        let key = self.keys.open_alerts();
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        if !alerts.is_empty() {
            pipe.hset_multiple(&key, alerts).ignore();
        }
        self.bounded("replacing the open alerts", pipe.exec_async(&mut con))
            .await
    }

    /// Readiness: Redis answers `PING` within the bounds.
    pub async fn ping(&self) -> Result<(), RedisSinkError> {
        let mut con = self.con.clone();
        let _: String = self
            .bounded("PING", redis::cmd("PING").query_async(&mut con))
            .await?;
        Ok(())
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisSinkError> {
        match tokio::time::timeout(self.operation_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(RedisSinkError::Redis { op, source }),
            Err(_) => Err(RedisSinkError::Timeout {
                op,
                after: self.operation_timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts_ms: i64, boot_id: i64, seq: i64) -> Row {
        Row {
            device_id: "d".into(),
            boot_id,
            seq,
            ts_ms,
            value: 0.0,
            channel_id: 0,
            quality: 0,
            clock_synced: true,
        }
    }

    fn live(row: Row, boot_seen_us: i64) -> LiveRow {
        LiveRow { row, boot_seen_us }
    }

    #[test]
    fn boot_hex_orders_like_the_rust_order() {
        // Negative i64 boot ids are the high half of the u64 order; the hex must agree.
        let a = live(row(1, 1, 0), 5);
        let b = live(row(1, -1, 0), 5);
        assert!(b.is_newer_than(&a) && !a.is_newer_than(&b));
        assert!(boot_hex(&b.row) > boot_hex(&a.row));
        assert_eq!(boot_hex(&b.row), "ffffffffffffffff");
        assert_eq!(boot_hex(&a.row), "0000000000000001");
    }

    #[test]
    fn no_timestamp_takes_part_in_the_order() {
        // Within a boot, seq; a reading dated a day ahead does not outrank a later one.
        let ahead = live(row(1_000 + 86_400_000, 7, 10), 100);
        assert!(live(row(1_000, 7, 11), 100).is_newer_than(&ahead));
        assert!(!ahead.is_newer_than(&live(row(1_000, 7, 11), 100)));
        // Across boots, the one first seen later, whatever the times and seqs.
        let old_boot = live(row(9_000_000, 1, 1_000_000), 100);
        let new_boot = live(row(1_000, 2, 0), 200);
        assert!(new_boot.is_newer_than(&old_boot) && !old_boot.is_newer_than(&new_boot));
        // A replay is not newer than itself.
        assert!(!new_boot.is_newer_than(&new_boot.clone()));
    }
}
