//! The PostgreSQL write path: batches of readings into `sensor_readings` and
//! `device_stats_hourly`, partition upkeep, and the `system_events` log.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

use sqlx::postgres::PgPool;
use sqlx::types::chrono::NaiveDate;

use crate::alerts::sql::Applied;
use crate::alerts::Transition;
use crate::coverage::{self, Held};
use crate::ownership::{self, Progress};
use crate::rows::Row;

/// The ingester's only way into PostgreSQL.
///
/// It exists so that the guarantees of the write path live in one place rather than in
/// every caller:
/// - **fast**: a batch travels as one binary `COPY` into a per-connection staging table
///   (no per-row statements, no multi-row `VALUES`), then one set-based
///   `INSERT … SELECT` moves it into `sensor_readings`;
/// - **replay-safe**: readings already stored are skipped (`ON CONFLICT DO NOTHING` on
///   the dedup key), and the hourly statistics are folded from the rows actually
///   inserted, in the same statement and the same transaction, so a replayed or
///   overlapping batch adds neither rows nor counts;
/// - **all or nothing**: a batch commits entirely or not at all, together with the alert
///   transitions it caused ([`Store::write_batch_with_alerts`]), so the caller may store
///   its Kafka offsets exactly when the write returns `Ok`.
///
/// Two statements do the move ([`WritePath`]). `ON CONFLICT` costs a speculative
/// insertion per row (an extra index probe and WAL record: the dedup statement takes
/// about 40% longer than the plain one in the ingest benchmark), which almost every
/// batch does not need: a batch is first tried
/// with a plain `INSERT … SELECT` that folds the stats straight from the staging table.
/// If any reading is already stored (or repeated in the batch), the unique key makes that
/// statement fail, the transaction is rolled back, and the batch is redone with the
/// `ON CONFLICT DO NOTHING … RETURNING` statement that aggregates only what it inserted.
/// Both are exact; the first is only faster. After a batch that met duplicates, the next
/// [`DEDUP_STREAK`] batches go straight to the second statement, since replays after a
/// restart or rebalance come in runs.
///
/// Each pooled connection gets its own `TEMP` staging table (created on first use,
/// emptied at every commit by `ON COMMIT DELETE ROWS`). That needs session-level
/// connections: do not put a transaction-pooling proxy (pgbouncer in transaction mode)
/// between the ingester and PostgreSQL.
pub struct Store {
    pool: PgPool,
    /// The COPY encode buffer, kept between batches so a steady stream of batches does
    /// not allocate. A concurrent second batch simply works with a fresh buffer.
    spare: Mutex<Vec<u8>>,
    /// How many more batches go straight to the dedup statement.
    dedup_left: AtomicU32,
}

/// After a batch that met readings already stored, this many following batches use the
/// dedup statement directly instead of trying the plain one first.
pub const DEDUP_STREAK: u32 = 8;

/// Which statement stored a batch (see [`Store`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WritePath {
    /// Empty batch: nothing was sent.
    #[default]
    Empty,
    /// Plain `INSERT … SELECT`: the batch held no reading already stored.
    Plain,
    /// `INSERT … ON CONFLICT DO NOTHING … RETURNING`, chosen directly because a recent
    /// batch met duplicates.
    Dedup,
    /// The plain statement met a duplicate; rolled back and redone with the dedup one.
    PlainThenDedup,
}

/// What one [`Store::write_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Readings that were new and are now stored (and counted in the hourly stats).
    pub inserted: u64,
    /// Readings skipped because they were already stored, or appeared earlier in the
    /// same batch.
    pub duplicates: u64,
    /// Which statement stored the batch (for metrics; both are exact).
    pub path: WritePath,
}

/// Everything a committed batch reports: what it did, the alert transitions as the
/// database took them, and the coverage of each (device, boot) it touched (for the
/// confirmations to the devices).
#[derive(Debug, Default)]
pub struct Committed {
    pub outcome: BatchOutcome,
    pub applied: Vec<Applied>,
    pub held: Vec<Held>,
}

/// Severity of a `system_events` row (the table's closed set of levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLevel {
    Info,
    Warning,
    Error,
}

impl EventLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::Info => "info",
            EventLevel::Warning => "warning",
            EventLevel::Error => "error",
        }
    }
}

/// Why a row was refused before anything was sent to PostgreSQL. The decoder and the
/// ingester's validation already guarantee all of these for rows built by
/// [`crate::rows::rows_from_frame`]; this is the backstop, so that a bad row fails with
/// its index instead of with a COPY error somewhere in the middle of a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRow {
    #[error("device id {0:?} breaks the naming rule: {1}")]
    DeviceId(String, protocol::IdError),
    #[error("seq {0} is negative")]
    NegativeSeq(i64),
    #[error("channel {0} is outside 0..=255")]
    Channel(i16),
    #[error("quality {0} is outside 0..=7")]
    Quality(i16),
    #[error("timestamp {0} ms is outside 1970-01-01 ..= 9999-12-31")]
    Timestamp(i64),
}

/// Errors of the write path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The batch holds a row that can never be stored; nothing was written.
    #[error("row {index} of the batch: {reason}")]
    InvalidRow { index: usize, reason: InvalidRow },
    /// PostgreSQL (or the connection to it) failed; the transaction, if any, was rolled
    /// back, so nothing of the batch is stored and it can be retried as a whole.
    #[error("PostgreSQL failed while {during}: {source}")]
    Database {
        during: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The server's row count contradicts what was sent: a bug, not bad luck.
    #[error("COPY reported {reported} rows, {sent} were sent")]
    CopyCount { sent: u64, reported: u64 },
    /// Another instance holds these partitions now (this one's lease expired while it
    /// was stalled): the transaction was rolled back, and their new owner replays them.
    #[error("the lease on partitions {partitions:?} passed to another instance; the batch was rolled back")]
    LeaseLost { partitions: Vec<i32> },
}

impl StoreError {
    fn db(during: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database { during, source }
    }
}

/// Size of one `CopyData` message. PostgreSQL reads COPY input 64 KiB at a time, so
/// bigger messages buy nothing, and 1 MiB keeps the buffer small for any batch size.
const COPY_CHUNK: usize = 1 << 20;

/// BEGIN, and the staging table if this connection has none yet, in one round trip
/// (quietly: IF NOT EXISTS would otherwise log a NOTICE per batch).
const STAGING_DDL: &str = "BEGIN; \
     SET LOCAL client_min_messages = warning; \
     CREATE TEMP TABLE IF NOT EXISTS ingest_staging (\
         device_id text, boot_id bigint, seq bigint, ts timestamptz, value real, \
         channel_id smallint, quality smallint, clock_synced boolean\
     ) ON COMMIT DELETE ROWS";

/// Columns in the order of [`COPY_COLUMNS`].
const COPY_STAGING: &str = "COPY ingest_staging \
     (device_id, boot_id, seq, ts, value, channel_id, quality, clock_synced) \
     FROM STDIN (FORMAT binary)";

/// Moves the staged batch into `sensor_readings`; each statement below adds its own
/// conflict handling after it.
macro_rules! insert_staged {
    () => {
        "INSERT INTO sensor_readings
           (device_id, boot_id, seq, ts, value, channel_id, quality, clock_synced)
    SELECT device_id, boot_id, seq, ts, value, channel_id, quality, clock_synced
      FROM ingest_staging"
    };
}

/// Folds the rows of `$source` into `device_stats_hourly` (the merge-upsert of its
/// migration). Non-finite values (sensor faults) are stored but kept out of the
/// statistics: NaN would poison a sum forever, and +inf followed by -inf in one hour
/// would make it NaN. The hour is the UTC hour: `date_bin` on a timestamptz works on
/// absolute time (any session TimeZone), and equals
/// `to_timestamp(floor(extract(epoch FROM ts) / 3600) * 3600)`, cheaper.
macro_rules! fold_hourly_from {
    ($source:literal) => {
        concat!(
            "INSERT INTO device_stats_hourly AS s
           (device_id, channel_id, hour, count, min, max, sum, sum_sq)
    SELECT device_id, channel_id,
           date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00'),
           count(*), min(value), max(value),
           sum(value::float8), sum(value::float8 * value::float8)
      FROM ",
            $source,
            "
     WHERE value NOT IN ('NaN', 'Infinity', '-Infinity')
     GROUP BY 1, 2, 3
    ON CONFLICT (device_id, channel_id, hour) DO UPDATE SET
           count      = s.count + EXCLUDED.count,
           min        = least(s.min, EXCLUDED.min),
           max        = greatest(s.max, EXCLUDED.max),
           sum        = s.sum + EXCLUDED.sum,
           sum_sq     = s.sum_sq + EXCLUDED.sum_sq,
           updated_at = now()"
        )
    };
}

/// The plain statement ([`WritePath::Plain`]): moves the staged batch into
/// `sensor_readings` and folds all of it into `device_stats_hourly`. Correct only because
/// it fails (unique violation, and the transaction with it) unless every staged row is
/// new and distinct, in which case "every staged row" is "every inserted row".
/// Data-modifying CTEs always run to completion, referenced or not.
const MOVE_PLAIN: &str = concat!(
    "WITH inserted AS (\n    ",
    insert_staged!(),
    "\n), hourly AS (\n    ",
    fold_hourly_from!("ingest_staging"),
    "\n)\nSELECT 1"
);

/// The dedup statement ([`WritePath::Dedup`]): moves the staged batch into
/// `sensor_readings`, skipping readings already present (and repeats within the batch:
/// ON CONFLICT DO NOTHING also skips a row that conflicts with one inserted earlier by
/// the same statement), and folds exactly the inserted rows into `device_stats_hourly`.
const MOVE_DEDUP: &str = concat!(
    "WITH inserted AS (\n    ",
    insert_staged!(),
    "\n    ON CONFLICT DO NOTHING\n    RETURNING device_id, channel_id, ts, value",
    "\n), hourly AS (\n    ",
    fold_hourly_from!("inserted"),
    "\n)\nSELECT count(*) FROM inserted"
);

/// SQLSTATE unique_violation: the only unique key of sensor_readings is the dedup key.
const UNIQUE_VIOLATION: &str = "23505";

/// How long retention waits for the ACCESS EXCLUSIVE lock DETACH needs before giving up
/// (and leaving the partitions for the next run), so ingest never queues behind it.
const RETENTION_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            spare: Mutex::new(Vec::new()),
            dedup_left: AtomicU32::new(0),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores a batch in one transaction: binary COPY into the staging table, then one
    /// `INSERT … SELECT` into `sensor_readings` and the `device_stats_hourly` upsert of
    /// exactly the rows it inserted (see [`Store`] for the two statements). Returns once
    /// the transaction has committed; on error nothing of the batch is stored and the
    /// batch may be retried as a whole. An empty batch does nothing.
    pub async fn write_batch(&self, rows: &[Row]) -> Result<BatchOutcome, StoreError> {
        Ok(self
            .write_batch_with_alerts(rows, &[], &Progress::default())
            .await?
            .0)
    }

    /// [`Store::write_batch`], with the alert transitions the batch caused and the Kafka
    /// offsets it read up to written in the same transaction (see [`crate::alerts`] and
    /// [`crate::ownership`]); returns the transitions as the database took them. A batch
    /// of dead letters alone (no rows) still advances its offsets.
    pub async fn write_batch_with_alerts(
        &self,
        rows: &[Row],
        transitions: &[Transition],
        progress: &Progress,
    ) -> Result<(BatchOutcome, Vec<Applied>), StoreError> {
        let committed = self.write_batch_held(rows, transitions, progress).await?;
        Ok((committed.outcome, committed.applied))
    }

    /// [`Store::write_batch_with_alerts`], also returning the coverage of every
    /// (device, boot) of the batch after the commit (read in the coverage statement
    /// itself, so at no extra round trip).
    pub async fn write_batch_held(
        &self,
        rows: &[Row],
        transitions: &[Transition],
        progress: &Progress,
    ) -> Result<Committed, StoreError> {
        if rows.is_empty() {
            if !progress.is_empty() {
                self.advance_only(progress).await?;
            }
            return Ok(Committed::default());
        }
        for (index, row) in rows.iter().enumerate() {
            validate(row).map_err(|reason| StoreError::InvalidRow { index, reason })?;
        }
        let mut buf =
            std::mem::take(&mut *self.spare.lock().unwrap_or_else(PoisonError::into_inner));
        let result = self
            .write_validated(rows, transitions, progress, &mut buf)
            .await;
        buf.clear();
        *self.spare.lock().unwrap_or_else(PoisonError::into_inner) = buf;
        result
    }

    async fn write_validated(
        &self,
        rows: &[Row],
        transitions: &[Transition],
        progress: &Progress,
        buf: &mut Vec<u8>,
    ) -> Result<Committed, StoreError> {
        let sent = rows.len() as u64;
        let mut path = WritePath::Dedup;
        if self.dedup_left.load(Ordering::Relaxed) == 0 {
            match self
                .attempt(rows, transitions, progress, buf, false)
                .await?
            {
                Some((inserted, applied, held)) => {
                    let outcome = BatchOutcome {
                        inserted,
                        duplicates: sent.saturating_sub(inserted),
                        path: WritePath::Plain,
                    };
                    return Ok(Committed {
                        outcome,
                        applied,
                        held,
                    });
                }
                None => path = WritePath::PlainThenDedup,
            }
        }
        let (inserted, applied, held) = self
            .attempt(rows, transitions, progress, buf, true)
            .await?
            .unwrap_or_default();
        let duplicates = sent.saturating_sub(inserted);
        if duplicates > 0 {
            self.dedup_left.store(DEDUP_STREAK, Ordering::Relaxed);
        } else {
            // Saturating: another batch may have reset the streak meanwhile.
            let _ = self
                .dedup_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        let outcome = BatchOutcome {
            inserted,
            duplicates,
            path,
        };
        Ok(Committed {
            outcome,
            applied,
            held,
        })
    }

    /// One transaction: COPY `rows` into the staging table, move them with the dedup or
    /// the plain statement, write the alert transitions and the coverage, commit. Returns
    /// how many rows were inserted, the transitions applied and the coverage after the
    /// commit, or `None` if the plain statement met a row already stored (the transaction
    /// was rolled back).
    async fn attempt(
        &self,
        rows: &[Row],
        transitions: &[Transition],
        progress: &Progress,
        buf: &mut Vec<u8>,
        dedup: bool,
    ) -> Result<Option<(u64, Vec<Applied>, Vec<Held>)>, StoreError> {
        // BEGIN and the staging table in one round trip.
        let mut tx = self
            .pool
            .begin_with(STAGING_DDL)
            .await
            .map_err(StoreError::db("beginning the transaction"))?;

        let mut copy = tx
            .copy_in_raw(COPY_STAGING)
            .await
            .map_err(StoreError::db("starting COPY into the staging table"))?;
        buf.clear();
        buf.extend_from_slice(PGCOPY_HEADER);
        for row in rows {
            encode_row(buf, row);
            if buf.len() >= COPY_CHUNK {
                copy.send(buf.as_slice())
                    .await
                    .map_err(StoreError::db("sending COPY data"))?;
                buf.clear();
            }
        }
        buf.extend_from_slice(&(-1_i16).to_be_bytes());
        copy.send(buf.as_slice())
            .await
            .map_err(StoreError::db("sending COPY data"))?;
        let staged = copy
            .finish()
            .await
            .map_err(StoreError::db("finishing COPY into the staging table"))?;
        let sent = rows.len() as u64;
        if staged != sent {
            return Err(StoreError::CopyCount {
                sent,
                reported: staged,
            });
        }

        let inserted = if dedup {
            let inserted: i64 = sqlx::query_scalar(MOVE_DEDUP)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::db(
                    "inserting into sensor_readings and device_stats_hourly",
                ))?;
            u64::try_from(inserted).unwrap_or(0)
        } else {
            match sqlx::query(MOVE_PLAIN).execute(&mut *tx).await {
                Ok(_) => sent,
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
                    tx.rollback()
                        .await
                        .map_err(StoreError::db("rolling back after a duplicate"))?;
                    return Ok(None);
                }
                Err(e) => {
                    return Err(StoreError::Database {
                        during: "inserting into sensor_readings and device_stats_hourly",
                        source: e,
                    })
                }
            }
        };
        let applied = crate::alerts::sql::apply(&mut tx, transitions)
            .await
            .map_err(StoreError::db("writing alert transitions"))?;
        let held = coverage::record(&mut tx, rows)
            .await
            .map_err(StoreError::db("recording the readings' coverage"))?;
        fence(&mut tx, progress).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing the batch"))?;
        Ok(Some((inserted, applied, held)))
    }

    /// The offsets of a batch that had no rows, in a transaction of their own.
    async fn advance_only(&self, progress: &Progress) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::db("beginning the transaction"))?;
        fence(&mut tx, progress).await?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing the offsets"))
    }

    /// Makes sure the day partitions `from ..= from + days - 1` (UTC days) exist; returns
    /// how many it created. Rows of those days already sitting in the DEFAULT partition
    /// are moved into the new partition.
    pub async fn ensure_partitions(&self, from: NaiveDate, days: i32) -> Result<i32, StoreError> {
        sqlx::query_scalar("SELECT ensure_sensor_readings_partitions($1, $2)")
            .bind(from)
            .bind(days)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::db("creating day partitions"))
    }

    /// Retention: drops every day partition that lies entirely before `cutoff` (UTC);
    /// returns how many it dropped. Gives up after a few seconds if it cannot get its
    /// lock (the next run catches up) rather than making ingest queue behind it.
    pub async fn drop_partitions_before(&self, cutoff: NaiveDate) -> Result<i32, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::db("beginning retention"))?;
        sqlx::query(RETENTION_LOCK_TIMEOUT)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db("setting the retention lock timeout"))?;
        let dropped = sqlx::query_scalar("SELECT drop_sensor_readings_partitions_before($1)")
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::db("dropping old partitions"))?;
        tx.commit()
            .await
            .map_err(StoreError::db("committing retention"))?;
        Ok(dropped)
    }

    /// Appends one row to `system_events` and returns its `event_id`. `details` should be
    /// a JSON object; anything else is wrapped as `{"details": …}` so that the event is
    /// kept rather than refused by the table's CHECK.
    pub async fn record_event(
        &self,
        service: &str,
        instance: Option<&str>,
        level: EventLevel,
        kind: &str,
        message: &str,
        details: serde_json::Value,
    ) -> Result<i64, StoreError> {
        let details = match details {
            serde_json::Value::Object(_) => details,
            other => serde_json::json!({ "details": other }),
        };
        sqlx::query_scalar(
            "INSERT INTO system_events (service, instance, level, kind, message, details) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb) RETURNING event_id",
        )
        .bind(service)
        .bind(instance)
        .bind(level.as_str())
        .bind(kind)
        .bind(message)
        .bind(details.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::db("recording a system event"))
    }
}

/// Advances the batch's offsets in its transaction, or fails if a lease was lost (the
/// transaction is dropped, so rolled back).
async fn fence(tx: &mut sqlx::PgConnection, progress: &Progress) -> Result<(), StoreError> {
    let lost = ownership::advance(tx, progress)
        .await
        .map_err(StoreError::db("advancing the partition offsets"))?;
    if lost.is_empty() {
        Ok(())
    } else {
        Err(StoreError::LeaseLost { partitions: lost })
    }
}

fn validate(row: &Row) -> Result<(), InvalidRow> {
    protocol::validate_id(&row.device_id)
        .map_err(|e| InvalidRow::DeviceId(row.device_id.clone(), e))?;
    if row.seq < 0 {
        return Err(InvalidRow::NegativeSeq(row.seq));
    }
    if !(0..=255).contains(&row.channel_id) {
        return Err(InvalidRow::Channel(row.channel_id));
    }
    if !(0..=7).contains(&row.quality) {
        return Err(InvalidRow::Quality(row.quality));
    }
    if !(0..=MAX_TIMESTAMP_MS).contains(&row.ts_ms) {
        return Err(InvalidRow::Timestamp(row.ts_ms));
    }
    Ok(())
}

/// The protocol's upper bound (9999-12-31T23:59:59.999Z), as i64.
const MAX_TIMESTAMP_MS: i64 = protocol::MAX_TIMESTAMP_MS as i64;

/// The columns [`encode_row`] writes, in its order: name them in a `COPY` statement.
pub const COPY_COLUMNS: &str =
    "device_id, boot_id, seq, ts, value, channel_id, quality, clock_synced";

/// Start of a binary COPY stream: signature, flags (no OIDs), header extension length.
pub const PGCOPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Milliseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00 UTC.
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// Appends one tuple in PostgreSQL's binary COPY format, columns in the order of
/// [`COPY_COLUMNS`]: a field count, then each field as a big-endian i32 length and its
/// big-endian binary value. The row must have passed [`validate`] (the timestamp
/// arithmetic cannot overflow then; a device id is at most 24 bytes).
pub fn encode_row(buf: &mut Vec<u8>, row: &Row) {
    let id = row.device_id.as_bytes();
    buf.extend_from_slice(&8_i16.to_be_bytes());
    buf.extend_from_slice(&(id.len() as i32).to_be_bytes());
    buf.extend_from_slice(id);
    buf.extend_from_slice(&8_i32.to_be_bytes());
    buf.extend_from_slice(&row.boot_id.to_be_bytes());
    buf.extend_from_slice(&8_i32.to_be_bytes());
    buf.extend_from_slice(&row.seq.to_be_bytes());
    buf.extend_from_slice(&8_i32.to_be_bytes());
    buf.extend_from_slice(&pg_timestamp_us(row.ts_ms).to_be_bytes());
    buf.extend_from_slice(&4_i32.to_be_bytes());
    buf.extend_from_slice(&row.value.to_bits().to_be_bytes());
    buf.extend_from_slice(&2_i32.to_be_bytes());
    buf.extend_from_slice(&row.channel_id.to_be_bytes());
    buf.extend_from_slice(&2_i32.to_be_bytes());
    buf.extend_from_slice(&row.quality.to_be_bytes());
    buf.extend_from_slice(&1_i32.to_be_bytes());
    buf.push(u8::from(row.clock_synced));
}

/// A Unix timestamp in ms as a PostgreSQL timestamptz: µs since 2000-01-01 UTC.
/// Saturates instead of overflowing for values [`validate`] would refuse.
fn pg_timestamp_us(ts_ms: i64) -> i64 {
    ts_ms.saturating_sub(PG_EPOCH_MS).saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            device_id: "press-01".into(),
            boot_id: -2,
            seq: 7,
            ts_ms: PG_EPOCH_MS + 1,
            value: 1.5,
            channel_id: 3,
            quality: 4,
            clock_synced: true,
        }
    }

    #[test]
    fn a_row_encodes_as_a_binary_copy_tuple() {
        let mut buf = Vec::new();
        encode_row(&mut buf, &row());
        let mut expected = vec![0, 8, 0, 0, 0, 8];
        expected.extend_from_slice(b"press-01");
        expected.extend_from_slice(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        // 1 ms after the PostgreSQL epoch is 1000 µs.
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x03, 0xe8]);
        expected.extend_from_slice(&[0, 0, 0, 4, 0x3f, 0xc0, 0, 0]);
        expected.extend_from_slice(&[0, 0, 0, 2, 0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 2, 0, 4]);
        expected.extend_from_slice(&[0, 0, 0, 1, 1]);
        assert_eq!(buf, expected);
    }

    #[test]
    fn rows_the_table_would_refuse_are_caught_first() {
        assert_eq!(validate(&row()), Ok(()));
        type Case = (fn(&mut Row), fn(&InvalidRow) -> bool);
        let cases: [Case; 6] = [
            (
                |r| r.device_id = "a/b".into(),
                |e| matches!(e, InvalidRow::DeviceId(..)),
            ),
            (
                |r| r.device_id = "bad\0".into(),
                |e| matches!(e, InvalidRow::DeviceId(..)),
            ),
            (|r| r.seq = -1, |e| matches!(e, InvalidRow::NegativeSeq(-1))),
            (
                |r| r.channel_id = 256,
                |e| matches!(e, InvalidRow::Channel(256)),
            ),
            (|r| r.quality = 8, |e| matches!(e, InvalidRow::Quality(8))),
            (
                |r| r.ts_ms = MAX_TIMESTAMP_MS + 1,
                |e| matches!(e, InvalidRow::Timestamp(_)),
            ),
        ];
        for (spoil, expected) in cases {
            let mut bad = row();
            spoil(&mut bad);
            let err = validate(&bad).expect_err("refused");
            assert!(expected(&err), "{err:?}");
        }
    }
}
