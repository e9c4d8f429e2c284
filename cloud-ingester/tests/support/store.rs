//! What the store tests share: rows built the way the ingester builds them from frames,
//! the hourly statistics they must produce, and small queries.

use cloud_ingester::rows::{rows_from_frame, Row};
use cloud_ingester::store::{BatchOutcome, WritePath};
use protocol::{BootId, DeviceId, Frame, Quality, Reading};
use sqlx::postgres::PgPool;
use sqlx::types::chrono::{DateTime, NaiveDate, Utc};

pub const BOOT: [u8; 8] = [0xff, 0, 0, 0, 0, 0, 0, 1];

/// 2025-06-15T10:00:00Z, a whole UTC hour, on a day the migrations made no partition
/// for (they make them around the current date).
pub const T0: i64 = 1_749_981_600_000;
pub const HOUR_MS: i64 = 3_600_000;

/// One reading for `readings()`: channel, ms after the base time, value, quality.
pub type Spec = (u8, u32, f32, Quality);

/// Rows of `device` starting at `first_seq`, built the way the ingester builds them:
/// frames of at most 50 readings, turned into rows. `specs` are (channel, ms after
/// `base_ts_ms`, value, quality), in time order.
pub fn readings(device: &str, first_seq: u64, base_ts_ms: i64, specs: &[Spec]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (chunk_index, chunk) in specs.chunks(50).enumerate() {
        let chunk_start = chunk[0].1;
        let mut frame = Frame::new(
            DeviceId::new(device).expect("test device id"),
            BootId(BOOT),
            first_seq + 50 * chunk_index as u64,
            u64::try_from(base_ts_ms + i64::from(chunk_start)).expect("test times after 1970"),
        );
        for &(channel, offset_ms, value, quality) in chunk {
            frame
                .readings
                .push(Reading {
                    channel,
                    offset_ms: offset_ms - chunk_start,
                    value,
                    quality,
                })
                .expect("at most 64 readings per frame");
        }
        frame
            .validate()
            .expect("valid test frame (readings in time order)");
        rows_from_frame(&frame, &mut rows);
    }
    rows
}

/// `n` readings on channels 0 and 1 alternately, one every `step_ms`, value = seq/2
/// (exact in f32 and f64, so sums are exact whatever the summation order).
pub fn series(device: &str, first_seq: u64, base_ts_ms: i64, n: usize, step_ms: u32) -> Vec<Row> {
    let specs: Vec<Spec> = (0..n)
        .map(|i| {
            let seq = first_seq + i as u64;
            (
                (i % 2) as u8,
                i as u32 * step_ms,
                seq as f32 / 2.0,
                Quality::empty(),
            )
        })
        .collect();
    readings(device, first_seq, base_ts_ms, &specs)
}

/// One `device_stats_hourly` row: device, channel, hour, count, min, max, sum, sum_sq.
pub type Stat = (String, i16, DateTime<Utc>, i64, f64, f64, f64, f64);

pub async fn stats(pool: &PgPool) -> Vec<Stat> {
    sqlx::query_as(
        "SELECT device_id, channel_id, hour, count, min, max, sum, sum_sq \
         FROM device_stats_hourly ORDER BY device_id, channel_id, hour",
    )
    .fetch_all(pool)
    .await
    .expect("read hourly stats")
}

/// What device_stats_hourly must hold for exactly these (distinct) rows.
pub fn expected_stats(rows: &[Row]) -> Vec<Stat> {
    type Acc = (i64, f64, f64, f64, f64);
    let mut map = std::collections::BTreeMap::<(String, i16, i64), Acc>::new();
    for r in rows.iter().filter(|r| r.value.is_finite()) {
        let hour = r.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let v = f64::from(r.value);
        let e = map
            .entry((r.device_id.clone(), r.channel_id, hour))
            .or_insert((0, f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0));
        *e = (e.0 + 1, e.1.min(v), e.2.max(v), e.3 + v, e.4 + v * v);
    }
    map.into_iter()
        .map(|((d, c, h), (n, min, max, sum, sq))| (d, c, utc_ms(h), n, min, max, sum, sq))
        .collect()
}

pub fn outcome(inserted: u64, duplicates: u64, path: WritePath) -> BatchOutcome {
    BatchOutcome {
        inserted,
        duplicates,
        path,
    }
}

pub fn utc_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("test timestamp in range")
}

pub fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_else(|e| panic!("bad test day {s}: {e}"))
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
