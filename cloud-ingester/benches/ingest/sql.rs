//! The PostgreSQL side of the figures: the binary COPY the ceiling and the staging share,
//! write_batch's statements taken apart (the breakdown, (f)), the per-row INSERT of (c),
//! and the WAL counters.

use anyhow::Context as _;
use cloud_ingester::rows::Row;
use cloud_ingester::store::{encode_row, COPY_COLUMNS, PGCOPY_HEADER};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::types::chrono::DateTime;

use crate::CHUNK;

#[derive(Default)]
pub struct Wal {
    pub ceiling: u64,
    pub store: u64,
    pub replay: u64,
}

pub const STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS bench_staging (\
     device_id text, boot_id bigint, seq bigint, ts timestamptz, value real, \
     channel_id smallint, quality smallint, clock_synced boolean) ON COMMIT DELETE ROWS";

pub const INSERT_SELECT: &str = "INSERT INTO sensor_readings (device_id, boot_id, seq, ts, value, \
     channel_id, quality, clock_synced) SELECT device_id, boot_id, seq, ts, value, channel_id, \
     quality, clock_synced FROM bench_staging";

pub const STATS_UPSERT: &str = "INSERT INTO device_stats_hourly AS s \
         (device_id, channel_id, hour, count, min, max, sum, sum_sq) \
     SELECT device_id, channel_id, date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00'), \
            count(*), min(value), max(value), sum(value::float8), sum(value::float8 * value::float8) \
       FROM rows WHERE value NOT IN ('NaN', 'Infinity', '-Infinity') GROUP BY 1, 2, 3 \
     ON CONFLICT (device_id, channel_id, hour) DO UPDATE SET count = s.count + EXCLUDED.count, \
         min = least(s.min, EXCLUDED.min), max = greatest(s.max, EXCLUDED.max), \
         sum = s.sum + EXCLUDED.sum, sum_sq = s.sum_sq + EXCLUDED.sum_sq, updated_at = now()";

/// Indexes of sensor_readings, added one at a time to `bench_indexes`.
pub const INDEX_STEPS: [(&str, &str); 4] = [
    ("no index", ""),
    (
        "+ the dedup key UNIQUE (device_id, ts, boot_id, seq)",
        "ALTER TABLE bench_indexes ADD UNIQUE (device_id, ts, boot_id, seq)",
    ),
    (
        "+ B-tree (device_id, channel_id, ts)",
        "CREATE INDEX ON bench_indexes (device_id, channel_id, ts)",
    ),
    (
        "+ BRIN (ts): all of sensor_readings' indexes",
        "CREATE INDEX ON bench_indexes USING brin (ts)",
    ),
];

/// Steps of write_batch's two statements: (label, SQL after the staging COPY, index of
/// the step it adds to). `{insert}` and `{stats}` are filled in by `staged`.
pub const BREAKDOWN: [(&str, &str, Option<usize>); 5] = [
    ("1. COPY into the temp staging table only", "", None),
    (
        "2. 1 + INSERT ... SELECT into sensor_readings",
        "{insert}",
        Some(0),
    ),
    (
        "3. 2 + stats upsert from staging (write_batch, plain statement)",
        "WITH rows AS (SELECT * FROM bench_staging), ins AS ({insert}), \
         stats AS ({stats}) SELECT 1",
        Some(1),
    ),
    (
        "4. 2 + ON CONFLICT DO NOTHING",
        "{insert} ON CONFLICT DO NOTHING",
        Some(1),
    ),
    (
        "5. 4 + RETURNING into stats upsert (write_batch, dedup stmt)",
        "WITH rows AS ({insert} ON CONFLICT DO NOTHING RETURNING device_id, channel_id, ts, \
         value), stats AS ({stats}) SELECT count(*) FROM rows",
        Some(3),
    ),
];

/// One transaction: `rows` by binary COPY into a temp staging table, then `sql` (a
/// BREAKDOWN step).
pub async fn staged(pool: &PgPool, rows: &[Row], sql: &str) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    stage(&mut tx, rows).await?;
    if !sql.is_empty() {
        let sql = sql
            .replace("{insert}", INSERT_SELECT)
            .replace("{stats}", STATS_UPSERT);
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The temp staging table (created if missing) filled with `rows` by binary COPY.
pub async fn stage(tx: &mut PgConnection, rows: &[Row]) -> anyhow::Result<()> {
    sqlx::raw_sql(STAGING).execute(&mut *tx).await?;
    copy_rows(tx, "bench_staging", rows).await?;
    Ok(())
}

pub async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE sensor_readings, device_stats_hourly, reading_coverage")
        .execute(pool)
        .await?;
    Ok(())
}

/// One binary COPY of `rows` straight into sensor_readings, encoded and sent in 1 MiB
/// chunks exactly as the store sends its staging COPY.
pub async fn raw_copy(pool: &PgPool, rows: &[Row]) -> anyhow::Result<u64> {
    raw_copy_into(pool, "sensor_readings", rows).await
}

pub async fn raw_copy_into(pool: &PgPool, table: &str, rows: &[Row]) -> anyhow::Result<u64> {
    let mut conn = pool.acquire().await?;
    copy_rows(&mut conn, table, rows).await
}

/// One binary COPY of `rows` into `table` on `conn`, encoded and sent in 1 MiB chunks
/// exactly as the store sends its staging COPY; returns the rows copied.
async fn copy_rows(conn: &mut PgConnection, table: &str, rows: &[Row]) -> anyhow::Result<u64> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut buf = Vec::with_capacity(CHUNK + 256);
    buf.extend_from_slice(PGCOPY_HEADER);
    for row in rows {
        encode_row(&mut buf, row);
        if buf.len() >= CHUNK {
            copy.send(buf.as_slice()).await?;
            buf.clear();
        }
    }
    buf.extend_from_slice(&(-1_i16).to_be_bytes());
    copy.send(buf.as_slice()).await?;
    Ok(copy.finish().await?)
}

pub async fn insert_one(conn: &mut PgConnection, row: &Row) -> anyhow::Result<u64> {
    let ts = DateTime::from_timestamp_millis(row.ts_ms).context("timestamp")?;
    Ok(sqlx::query(
        "INSERT INTO sensor_readings \
             (device_id, boot_id, seq, ts, value, channel_id, quality, clock_synced) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&row.device_id)
    .bind(row.boot_id)
    .bind(row.seq)
    .bind(ts)
    .bind(row.value)
    .bind(row.channel_id)
    .bind(row.quality)
    .bind(row.clock_synced)
    .execute(conn)
    .await?
    .rows_affected())
}

pub async fn wal_lsn(pool: &PgPool) -> anyhow::Result<String> {
    Ok(
        sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(pool)
            .await?,
    )
}

pub async fn wal_since(pool: &PgPool, lsn: String) -> anyhow::Result<u64> {
    let bytes: i64 = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)::bigint",
    )
    .bind(lsn)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}
