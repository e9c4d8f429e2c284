//! What the schema tests share: their seed devices, database errors by SQLSTATE, test
//! times, and readings inserted and found the way the ingester does.

use std::collections::BTreeSet;

use sqlx::postgres::PgConnection;
use sqlx::types::chrono::{DateTime, NaiveDate, Utc};

pub const SEED_DEVICES: [&str; 5] = [
    "cnc-spindle-01",
    "compressor-01",
    "furnace-01",
    "paint-booth-01",
    "press-01",
];

/// SQLSTATE of a database error, or a panic naming what failed instead.
pub fn sqlstate(result: Result<impl std::fmt::Debug, sqlx::Error>) -> (String, Option<String>) {
    match result {
        Ok(value) => panic!("statement succeeded ({value:?}), expected a database error"),
        Err(sqlx::Error::Database(db)) => (
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.constraint().map(str::to_owned),
        ),
        Err(other) => panic!("expected a database error, got {other}"),
    }
}

/// Asserts that `result` is a CHECK violation (23514) of the named constraint.
pub fn assert_check_violation(result: Result<impl std::fmt::Debug, sqlx::Error>, constraint: &str) {
    let (code, name) = sqlstate(result);
    assert_eq!(code, "23514", "expected a check violation of {constraint}");
    assert_eq!(name.as_deref(), Some(constraint));
}

pub fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad test timestamp {s}: {e}"))
        .with_timezone(&Utc)
}

pub fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_else(|e| panic!("bad test day {s}: {e}"))
}

/// Inserts one reading the way the ingester does (a replay is a no-op); returns the
/// number of rows inserted (0 or 1).
pub async fn insert_reading(
    conn: &mut PgConnection,
    device: &str,
    boot_id: i64,
    seq: i64,
    ts: DateTime<Utc>,
    value: f32,
) -> u64 {
    sqlx::query(
        "INSERT INTO sensor_readings \
             (device_id, boot_id, seq, channel_id, ts, value, quality, clock_synced) \
         VALUES ($1, $2, $3, 0, $4, $5, 0, true) \
         ON CONFLICT (device_id, boot_id, seq, ts) DO NOTHING",
    )
    .bind(device)
    .bind(boot_id)
    .bind(seq)
    .bind(ts)
    .bind(value)
    .execute(conn)
    .await
    .expect("insert reading")
    .rows_affected()
}

/// Which table each reading of `device` sits in, by seq.
pub async fn partitions_of(conn: &mut PgConnection, device: &str) -> Vec<(i64, String)> {
    sqlx::query_as(
        "SELECT seq, tableoid::regclass::text FROM sensor_readings \
         WHERE device_id = $1 ORDER BY seq",
    )
    .bind(device)
    .fetch_all(conn)
    .await
    .expect("list readings")
}

/// Names of the partitions of sensor_readings.
pub async fn partition_names(conn: &mut PgConnection) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT inhrelid::regclass::text FROM pg_inherits \
         WHERE inhparent = 'sensor_readings'::regclass",
    )
    .fetch_all(conn)
    .await
    .expect("list partitions")
    .into_iter()
    .collect()
}

pub async fn count_readings(conn: &mut PgConnection, table: &str) -> i64 {
    // `table` is always a literal from this file.
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(conn)
        .await
        .expect("count readings")
}
