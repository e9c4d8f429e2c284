//! The PostgreSQL write path (`cloud_ingester::store`) against a real PostgreSQL: what a
//! batch stores, that replays, overlaps and in-batch repeats add neither rows nor
//! statistics, that hourly buckets and day partitions are the UTC ones, that a failed
//! batch leaves nothing behind, and the events log.
//!
//! Each `#[sqlx::test]` gets a fresh database with every migration applied (see
//! tests/schema.rs). Run with `DATABASE_URL=postgres://… cargo test -p cloud-ingester
//! --test store`.

use cloud_ingester::coverage::{Held, HELD_RANGES};
use cloud_ingester::rows::{rows_from_frame, Row};
use cloud_ingester::store::{
    BatchOutcome, EventLevel, InvalidRow, Store, StoreError, WritePath, DEDUP_STREAK,
};
use protocol::{BootId, DeviceId, Frame, Quality, Reading};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::chrono::{DateTime, NaiveDate, Utc};

const BOOT: [u8; 8] = [0xff, 0, 0, 0, 0, 0, 0, 1];

/// 2025-06-15T10:00:00Z, a whole UTC hour, on a day the migrations made no partition
/// for (they make them around the current date).
const T0: i64 = 1_749_981_600_000;
const HOUR_MS: i64 = 3_600_000;

/// One reading for `readings()`: channel, ms after the base time, value, quality.
type Spec = (u8, u32, f32, Quality);

/// Rows of `device` starting at `first_seq`, built the way the ingester builds them:
/// frames of at most 50 readings, turned into rows. `specs` are (channel, ms after
/// `base_ts_ms`, value, quality), in time order.
fn readings(device: &str, first_seq: u64, base_ts_ms: i64, specs: &[Spec]) -> Vec<Row> {
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
fn series(device: &str, first_seq: u64, base_ts_ms: i64, n: usize, step_ms: u32) -> Vec<Row> {
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
type Stat = (String, i16, DateTime<Utc>, i64, f64, f64, f64, f64);

async fn stats(pool: &PgPool) -> Vec<Stat> {
    sqlx::query_as(
        "SELECT device_id, channel_id, hour, count, min, max, sum, sum_sq \
         FROM device_stats_hourly ORDER BY device_id, channel_id, hour",
    )
    .fetch_all(pool)
    .await
    .expect("read hourly stats")
}

/// What device_stats_hourly must hold for exactly these (distinct) rows.
fn expected_stats(rows: &[Row]) -> Vec<Stat> {
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

fn outcome(inserted: u64, duplicates: u64, path: WritePath) -> BatchOutcome {
    BatchOutcome {
        inserted,
        duplicates,
        path,
    }
}

fn utc_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("test timestamp in range")
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_else(|e| panic!("bad test day {s}: {e}"))
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_lands_with_every_column(pool: PgPool) {
    let store = Store::new(pool.clone());
    let mut rows = readings(
        "press-01",
        41,
        T0 + 123,
        &[
            (0, 0, 210.5, Quality::empty()),
            (3, 7, f32::NAN, Quality::SENSOR_FAULT),
            (
                255,
                9,
                -1.25,
                Quality::OUT_OF_RANGE | Quality::SIMULATED_ANOMALY,
            ),
        ],
    );
    for row in &mut rows {
        row.clock_synced = false;
    }
    let written = store.write_batch(&rows).await.expect("write");
    assert_eq!(written, outcome(3, 0, WritePath::Plain));

    type Stored = (
        i64,
        Vec<u8>,
        DateTime<Utc>,
        f32,
        i16,
        i16,
        bool,
        String,
        bool,
    );
    let stored: Vec<Stored> = sqlx::query_as(
        "SELECT seq, int8send(boot_id), ts, value, channel_id, quality, clock_synced, \
                device_id, received_at > now() - interval '1 minute' \
         FROM sensor_readings ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("read back");
    assert_eq!(stored.len(), 3);
    let boot = BOOT.to_vec();
    assert_eq!(
        stored[0],
        (
            41,
            boot.clone(),
            utc_ms(T0 + 123),
            210.5,
            0,
            0,
            false,
            "press-01".into(),
            true
        )
    );
    let (seq, ref b, ts, value, channel, quality, synced, ref device, recent) = stored[1];
    assert_eq!(
        (
            seq,
            b,
            ts,
            channel,
            quality,
            synced,
            device.as_str(),
            recent
        ),
        (42, &boot, utc_ms(T0 + 130), 3, 4, false, "press-01", true)
    );
    assert!(value.is_nan(), "a sensor fault keeps its NaN, got {value}");
    assert_eq!(
        stored[2],
        (
            43,
            boot,
            utc_ms(T0 + 132),
            -1.25,
            255,
            3,
            false,
            "press-01".into(),
            true
        )
    );

    // ts has millisecond precision exactly (no rounding through floating point).
    let ms: i64 = count(
        &pool,
        "SELECT (extract(epoch FROM ts) * 1000)::bigint FROM sensor_readings WHERE seq = 43",
    )
    .await;
    assert_eq!(ms, T0 + 132);
}

#[sqlx::test(migrations = "../migrations")]
async fn the_same_batch_twice_adds_no_rows_and_no_counts(pool: PgPool) {
    let store = Store::new(pool.clone());
    let mut rows = series("furnace-01", 0, T0, 200, 100);
    rows.extend(series("press-01", 1000, T0 - 10_000, 120, 250));
    let first = store.write_batch(&rows).await.expect("first write");
    assert_eq!(first, outcome(320, 0, WritePath::Plain));
    let after_first = stats(&pool).await;
    assert_eq!(after_first, expected_stats(&rows));
    let updated_at: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT updated_at FROM device_stats_hourly ORDER BY 1")
            .fetch_all(&pool)
            .await
            .expect("updated_at");

    let replay = store.write_batch(&rows).await.expect("replay");
    assert_eq!(replay, outcome(0, 320, WritePath::PlainThenDedup));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        320
    );
    assert_eq!(stats(&pool).await, after_first);
    let updated_again: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT updated_at FROM device_stats_hourly ORDER BY 1")
            .fetch_all(&pool)
            .await
            .expect("updated_at");
    assert_eq!(
        updated_again, updated_at,
        "a pure replay must not even touch the stats rows"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn an_overlapping_batch_counts_only_its_new_rows(pool: PgPool) {
    let store = Store::new(pool.clone());
    let all = series("cnc-spindle-01", 0, T0 + HOUR_MS - 5_000, 300, 50);
    let (first, second) = (&all[..200], &all[100..]);
    assert_eq!(
        store.write_batch(first).await.expect("first"),
        outcome(200, 0, WritePath::Plain)
    );
    assert_eq!(
        store.write_batch(second).await.expect("overlapping"),
        outcome(100, 100, WritePath::PlainThenDedup)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        300
    );
    let got = stats(&pool).await;
    assert_eq!(got, expected_stats(&all));
    // The series straddles an hour boundary, so the overlap was split across two
    // buckets of each channel.
    assert_eq!(got.len(), 4);
}

#[sqlx::test(migrations = "../migrations")]
async fn repeats_inside_one_batch_are_stored_and_counted_once(pool: PgPool) {
    let store = Store::new(pool.clone());
    let unique = series("paint-booth-01", 10, T0, 60, 1000);
    // Every row twice, interleaved, and the first one a third time at the end.
    let mut batch: Vec<Row> = unique.iter().flat_map(|r| [r.clone(), r.clone()]).collect();
    batch.push(unique[0].clone());
    let written = store.write_batch(&batch).await.expect("write");
    assert_eq!(written, outcome(60, 61, WritePath::PlainThenDedup));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        60
    );
    assert_eq!(stats(&pool).await, expected_stats(&unique));
}

#[sqlx::test(migrations = "../migrations")]
async fn stats_leave_out_non_finite_values(pool: PgPool) {
    let store = Store::new(pool.clone());
    let fault = Quality::SENSOR_FAULT;
    let rows = readings(
        "compressor-01",
        0,
        T0,
        &[
            (0, 0, 50.0, Quality::empty()),
            (0, 1, f32::NAN, fault),
            (0, 2, f32::INFINITY, fault),
            (0, 3, f32::NEG_INFINITY, fault),
            (0, 4, 60.0, Quality::empty()),
            // Channel 1 has faults only: it gets no stats row at all.
            (1, 5, f32::NAN, fault),
            (1, 6, f32::INFINITY, fault),
        ],
    );
    // Both statements see non-finite values: the plain one the first three readings,
    // the dedup one the rest (with a replay of the first three).
    assert_eq!(
        store.write_batch(&rows[..3]).await.expect("write"),
        outcome(3, 0, WritePath::Plain)
    );
    assert_eq!(
        store.write_batch(&rows).await.expect("overlap"),
        outcome(4, 3, WritePath::PlainThenDedup)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        7
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM sensor_readings WHERE value = 'NaN'"
        )
        .await,
        2
    );
    assert_eq!(
        stats(&pool).await,
        vec![(
            "compressor-01".into(),
            0,
            utc_ms(T0),
            2,
            50.0,
            60.0,
            110.0,
            6100.0
        )]
    );
}

/// Readings across two UTC hours and two UTC days land in the right day partitions and
/// hourly buckets, with the session in a time zone whose hours and days are not UTC's.
#[sqlx::test(migrations = "../migrations")]
async fn hours_and_days_are_utc_whatever_the_session_time_zone(
    pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // sqlx pins TimeZone to UTC at connect; set it afterwards, on every connection.
    let pool = pool_options
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET TimeZone = 'Asia/Kolkata'")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect_with(connect)
        .await
        .expect("connect");
    let tz: String = sqlx::query_scalar("SHOW TimeZone")
        .fetch_one(&pool)
        .await
        .expect("tz");
    assert_eq!(tz, "Asia/Kolkata");
    let store = Store::new(pool.clone());
    // 2025-06-15 (T0's day) and 2025-06-16; the migration only made partitions around
    // today, so these are new.
    assert_eq!(
        store
            .ensure_partitions(day("2025-06-15"), 2)
            .await
            .expect("partitions"),
        2
    );
    assert_eq!(
        store
            .ensure_partitions(day("2025-06-15"), 2)
            .await
            .expect("again"),
        0
    );

    let midnight = T0 + 14 * HOUR_MS; // 2025-06-16T00:00:00Z
    let rows = readings(
        "furnace-01",
        0,
        midnight - 2_000,
        &[
            (0, 0, 1.0, Quality::empty()),     // 23:59:58.000, day 1, hour 23
            (0, 1_999, 2.0, Quality::empty()), // 23:59:59.999
            (0, 2_000, 4.0, Quality::empty()), // 00:00:00.000, day 2, hour 00
            (0, 2_001, 8.0, Quality::empty()),
        ],
    );
    assert_eq!(
        store.write_batch(&rows[..3]).await.expect("write"),
        outcome(3, 0, WritePath::Plain)
    );
    // The dedup statement buckets the same way: the last reading comes with a replay
    // of the first three.
    assert_eq!(
        store.write_batch(&rows).await.expect("overlap"),
        outcome(1, 3, WritePath::PlainThenDedup)
    );
    let placed: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, tableoid::regclass::text FROM sensor_readings ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("placement");
    assert_eq!(
        placed,
        vec![
            (0, "sensor_readings_p20250615".into()),
            (1, "sensor_readings_p20250615".into()),
            (2, "sensor_readings_p20250616".into()),
            (3, "sensor_readings_p20250616".into()),
        ]
    );
    let f = "furnace-01".to_owned();
    assert_eq!(
        stats(&pool).await,
        vec![
            (
                f.clone(),
                0,
                utc_ms(midnight - HOUR_MS),
                2,
                1.0,
                2.0,
                3.0,
                5.0
            ),
            (f, 0, utc_ms(midnight), 2, 4.0, 8.0, 12.0, 80.0),
        ]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn readings_far_in_the_past_or_future_land_in_the_default_partition(pool: PgPool) {
    let store = Store::new(pool.clone());
    let mut rows = series("press-01", 0, 5_000, 3, 1000); // 1970: an unsynchronised Pi
    rows.extend(series("press-01", 100, 253_402_300_790_000, 3, 1000)); // 9999-12-31
    for row in &mut rows {
        row.clock_synced = row.ts_ms > 0 && row.seq >= 100;
    }
    assert_eq!(store.write_batch(&rows).await.expect("write").inserted, 6);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings_default").await,
        6
    );
    let got = stats(&pool).await;
    assert_eq!(got, expected_stats(&rows));
    assert_eq!(got[0].2, utc_ms(0));
    assert_eq!(got.last().map(|s| s.2), Some(utc_ms(253_402_297_200_000)));

    // Creating the 1970-01-01 partition later moves those rows out of DEFAULT, and a
    // replay then still finds them (it collides inside the new partition).
    assert_eq!(
        store
            .ensure_partitions(day("1970-01-01"), 1)
            .await
            .expect("partition"),
        1
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings_p19700101").await,
        3
    );
    assert_eq!(
        store.write_batch(&rows).await.expect("replay"),
        outcome(0, 6, WritePath::PlainThenDedup)
    );
    assert_eq!(stats(&pool).await, got);
}

#[sqlx::test(migrations = "../migrations")]
async fn retention_drops_only_whole_days_before_the_cutoff(pool: PgPool) {
    let store = Store::new(pool.clone());
    store
        .ensure_partitions(day("2025-06-15"), 3)
        .await
        .expect("partitions");
    let rows = series("furnace-01", 0, T0, 3, 1000);
    store.write_batch(&rows).await.expect("write");
    let before = partitions(&pool).await;
    let dropped = store
        .drop_partitions_before(day("2025-06-17"))
        .await
        .expect("retention");
    // 2025-06-15 and -16 lie entirely before the cutoff; 2025-06-17, the partitions the
    // migration made around today, and DEFAULT stay.
    assert_eq!(dropped, 2);
    let mut expected = before;
    expected.retain(|p| p != "sensor_readings_p20250615" && p != "sensor_readings_p20250616");
    assert_eq!(partitions(&pool).await, expected);
    assert!(expected.contains(&"sensor_readings_p20250617".to_owned()));
    assert!(expected.contains(&"sensor_readings_default".to_owned()));
    // The readings went with their partition.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        0
    );
    assert_eq!(
        store
            .drop_partitions_before(day("2025-06-17"))
            .await
            .expect("again"),
        0
    );
}

async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT inhrelid::regclass::text FROM pg_inherits \
         WHERE inhparent = 'sensor_readings'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("partitions")
}

#[sqlx::test(migrations = "../migrations")]
async fn a_batch_larger_than_a_copy_chunk_arrives_whole(pool: PgPool) {
    let store = Store::new(pool.clone());
    // ~80 bytes a row: 30,000 rows is about 2.4 MB, three COPY messages.
    let mut rows = Vec::new();
    for d in 0..10 {
        rows.extend(series(&format!("dev-{d}"), 0, T0, 3_000, 10));
    }
    assert_eq!(
        store.write_batch(&rows).await.expect("big batch"),
        outcome(30_000, 0, WritePath::Plain)
    );
    let (n, seqs): (i64, i64) =
        sqlx::query_as("SELECT count(*), sum(seq)::bigint FROM sensor_readings")
            .fetch_one(&pool)
            .await
            .expect("totals");
    assert_eq!((n, seqs), (30_000, 10 * (2_999 * 3_000 / 2)));
    assert_eq!(stats(&pool).await, expected_stats(&rows));
}

/// A batch that fails inside PostgreSQL leaves no rows, no stats and nothing in the
/// staging table: the next batch on the same connection stores exactly its own rows.
#[sqlx::test(migrations = "../migrations")]
async fn a_failed_batch_leaves_nothing_behind(
    pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = pool_options
        .max_connections(1)
        .connect_with(connect)
        .await
        .expect("connect");
    let store = Store::new(pool.clone());
    let rows = series("press-01", 770, T0, 20, 100);
    sqlx::query("ALTER TABLE sensor_readings ADD CONSTRAINT test_refuse_777 CHECK (seq <> 777)")
        .execute(&pool)
        .await
        .expect("add constraint");
    match store.write_batch(&rows).await {
        Err(StoreError::Database {
            source: sqlx::Error::Database(db),
            ..
        }) => {
            assert_eq!(db.constraint(), Some("test_refuse_777"));
        }
        other => panic!("expected the CHECK to fail the batch, got {other:?}"),
    }
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM device_stats_hourly").await,
        0
    );

    sqlx::query("ALTER TABLE sensor_readings DROP CONSTRAINT test_refuse_777")
        .execute(&pool)
        .await
        .expect("drop constraint");
    let next = series("press-01", 0, T0, 10, 100);
    assert_eq!(
        store.write_batch(&next).await.expect("next batch"),
        outcome(10, 0, WritePath::Plain)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        10
    );
    assert_eq!(stats(&pool).await, expected_stats(&next));
    // And the failed batch, retried, now goes through whole.
    assert_eq!(store.write_batch(&rows).await.expect("retry").inserted, 20);
}

/// Every batch starts from an empty staging table: rows of an earlier batch on the same
/// connection are not inserted again (here they would be: their rows were deleted).
#[sqlx::test(migrations = "../migrations")]
async fn each_batch_stages_only_its_own_rows(
    pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = pool_options
        .max_connections(1)
        .connect_with(connect)
        .await
        .expect("connect");
    let store = Store::new(pool.clone());
    let first = series("press-01", 0, T0, 30, 100);
    assert_eq!(store.write_batch(&first).await.expect("first").inserted, 30);
    sqlx::query("TRUNCATE sensor_readings, device_stats_hourly")
        .execute(&pool)
        .await
        .expect("truncate");
    let second = series("press-01", 100, T0, 5, 100);
    assert_eq!(
        store.write_batch(&second).await.expect("second"),
        outcome(5, 0, WritePath::Plain)
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        5
    );
    assert_eq!(stats(&pool).await, expected_stats(&second));
}

/// Fresh batches take the plain statement; a batch that meets stored readings is redone
/// with the dedup statement, and so are the next DEDUP_STREAK batches (a replay comes in
/// runs), after which the plain statement is tried again. Every path is exact.
#[sqlx::test(migrations = "../migrations")]
async fn after_duplicates_a_streak_of_batches_goes_straight_to_dedup(pool: PgPool) {
    let store = Store::new(pool.clone());
    let batch = |i: u64| series("furnace-01", 100 * i, T0 + 10_000 * i as i64, 100, 100);
    let mut stored = batch(0);
    assert_eq!(
        store.write_batch(&stored).await.expect("fresh"),
        outcome(100, 0, WritePath::Plain)
    );
    assert_eq!(
        store.write_batch(&batch(0)).await.expect("replay"),
        outcome(0, 100, WritePath::PlainThenDedup)
    );
    // Half of batch 1 is a replay of batch 0: met inside the streak, it restarts it.
    let mut overlap = batch(0)[50..].to_vec();
    overlap.extend(batch(1)[..50].iter().cloned());
    assert_eq!(
        store.write_batch(&overlap).await.expect("overlap"),
        outcome(50, 50, WritePath::Dedup)
    );
    stored.extend(batch(1)[..50].iter().cloned());
    for i in 2..2 + u64::from(DEDUP_STREAK) {
        assert_eq!(
            store
                .write_batch(&batch(i))
                .await
                .expect("fresh in the streak"),
            outcome(100, 0, WritePath::Dedup),
            "batch {i}"
        );
        stored.extend(batch(i));
    }
    let next = batch(2 + u64::from(DEDUP_STREAK));
    assert_eq!(
        store.write_batch(&next).await.expect("after the streak"),
        outcome(100, 0, WritePath::Plain)
    );
    stored.extend(next);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        stored.len() as i64
    );
    assert_eq!(stats(&pool).await, expected_stats(&stored));
}

#[sqlx::test(migrations = "../migrations")]
async fn an_invalid_row_refuses_the_batch_before_anything_is_sent(pool: PgPool) {
    let store = Store::new(pool.clone());
    let mut rows = series("press-01", 0, T0, 5, 100);
    rows[3].quality = 9;
    match store.write_batch(&rows).await {
        Err(StoreError::InvalidRow {
            index: 3,
            reason: InvalidRow::Quality(9),
        }) => {}
        other => panic!("expected row 3 refused, got {other:?}"),
    }
    rows[3].quality = 0;
    rows[4].device_id = "press/01".into();
    assert!(matches!(
        store.write_batch(&rows).await,
        Err(StoreError::InvalidRow {
            index: 4,
            reason: InvalidRow::DeviceId(..)
        })
    ));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sensor_readings").await,
        0
    );
}

/// Two writers with the same batch at the same time (a zombie consumer during a
/// rebalance): one stores it, the other skips every row, and the stats count it once.
#[sqlx::test(migrations = "../migrations")]
async fn concurrent_writers_of_the_same_batch_store_it_once(pool: PgPool) {
    let store = std::sync::Arc::new(Store::new(pool.clone()));
    let rows = std::sync::Arc::new(series("furnace-01", 0, T0, 2_000, 10));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (store, rows) = (store.clone(), rows.clone());
            tokio::spawn(async move { store.write_batch(&rows).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("join").expect("write"));
    }
    outcomes.sort_by_key(|o| o.inserted);
    // Both try the plain statement; the one that finds the other's rows redoes its
    // batch with the dedup statement.
    assert_eq!(
        outcomes,
        vec![
            outcome(0, 2_000, WritePath::PlainThenDedup),
            outcome(2_000, 0, WritePath::Plain),
        ]
    );
    assert_eq!(stats(&pool).await, expected_stats(&rows));
}

#[sqlx::test(migrations = "../migrations")]
async fn an_empty_batch_does_not_touch_the_database(pool: PgPool) {
    let store = Store::new(pool.clone());
    pool.close().await;
    assert_eq!(
        store.write_batch(&[]).await.expect("no-op"),
        BatchOutcome::default()
    );
    // The pool really is unusable: a non-empty batch fails.
    assert!(matches!(
        store.write_batch(&series("press-01", 0, T0, 1, 1)).await,
        Err(StoreError::Database { .. })
    ));
}

#[sqlx::test(migrations = "../migrations")]
async fn record_event_appends_to_system_events(pool: PgPool) {
    let store = Store::new(pool.clone());
    let id = store
        .record_event(
            "cloud-ingester",
            Some("host-a"),
            EventLevel::Warning,
            "redis_gap",
            "Redis unreachable for 12 s",
            serde_json::json!({ "seconds": 12, "batches": [1, 2] }),
        )
        .await
        .expect("record");
    type Event = (
        String,
        Option<String>,
        String,
        String,
        String,
        serde_json::Value,
    );
    let got: (String, Option<String>, String, String, String, String) = sqlx::query_as(
        "SELECT service, instance, level, kind, message, details::text FROM system_events \
         WHERE event_id = $1 AND at > now() - interval '1 minute'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .expect("read event");
    let got: Event = (
        got.0,
        got.1,
        got.2,
        got.3,
        got.4,
        serde_json::from_str(&got.5).expect("json"),
    );
    assert_eq!(
        got,
        (
            "cloud-ingester".into(),
            Some("host-a".into()),
            "warning".into(),
            "redis_gap".into(),
            "Redis unreachable for 12 s".into(),
            serde_json::json!({ "seconds": 12, "batches": [1, 2] }),
        )
    );

    // Details that are not an object are kept, wrapped; no instance is NULL.
    let id2 = store
        .record_event(
            "cloud-ingester",
            None,
            EventLevel::Info,
            "start",
            "",
            serde_json::json!([1]),
        )
        .await
        .expect("record");
    let (instance, details): (Option<String>, String) =
        sqlx::query_as("SELECT instance, details::text FROM system_events WHERE event_id = $1")
            .bind(id2)
            .fetch_one(&pool)
            .await
            .expect("read event");
    assert_eq!(instance, None);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&details).expect("json"),
        serde_json::json!({ "details": [1] })
    );
    assert!(id2 > id);

    // The table's rules still apply, as a typed error.
    assert!(matches!(
        store
            .record_event(
                "Cloud Ingester",
                None,
                EventLevel::Error,
                "error",
                "",
                serde_json::json!({})
            )
            .await,
        Err(StoreError::Database { .. })
    ));
}

/// `reading_coverage` as text per device: which sequence numbers are committed.
async fn coverage(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT device_id, seqs::text FROM reading_coverage ORDER BY 1, boot_id")
        .fetch_all(pool)
        .await
        .expect("reading_coverage")
}

#[sqlx::test(migrations = "../migrations")]
async fn the_coverage_holds_exactly_the_committed_sequence_numbers(pool: PgPool) {
    let store = Store::new(pool.clone());
    let first = series("furnace-01", 0, T0, 200, 100);
    store.write_batch(&first).await.expect("first batch");
    let mut second = series("furnace-01", 300, T0 + 30_000, 50, 100);
    second.extend(series("press-01", 1000, T0, 120, 250));
    store.write_batch(&second).await.expect("second batch");
    let expected = vec![
        ("furnace-01".to_owned(), "{[0,200),[300,350)}".to_owned()),
        ("press-01".to_owned(), "{[1000,1120)}".to_owned()),
    ];
    assert_eq!(coverage(&pool).await, expected, "a hole stays a hole");
    let touched: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT updated_at FROM reading_coverage ORDER BY device_id")
            .fetch_all(&pool)
            .await
            .expect("updated_at");

    store.write_batch(&first).await.expect("replay");
    assert_eq!(coverage(&pool).await, expected);
    let untouched: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT updated_at FROM reading_coverage ORDER BY device_id")
            .fetch_all(&pool)
            .await
            .expect("updated_at");
    assert_eq!(untouched, touched, "a replay does not rewrite the coverage");

    store
        .write_batch(&series("furnace-01", 200, T0 + 20_000, 100, 100))
        .await
        .expect("the hole, filled");
    assert_eq!(coverage(&pool).await[0].1, "{[0,350)}");
}

/// What the confirmations report: the coverage of each (device, boot) of a batch as it
/// stands after the commit, from the batch's own statement; a replay, which changes
/// nothing, still reports it (the agent that resent it needs its confirmation).
#[sqlx::test(migrations = "../migrations")]
async fn a_batch_returns_the_coverage_of_its_devices_after_the_commit_even_a_replay(pool: PgPool) {
    let store = Store::new(pool.clone());
    let boot = BootId(BOOT).as_i64();
    let held = |device: &str, ranges: &[(u64, u64)]| (device.to_owned(), boot, ranges.to_vec());
    // A boot's first sight is the clock-free order of boots: written once, then unchanged.
    type Ranges = (String, i64, Vec<(u64, u64)>);
    let ranges = |held: &[Held]| -> Vec<Ranges> {
        held.iter()
            .map(|h| (h.device_id.clone(), h.boot_id, h.ranges.clone()))
            .collect()
    };
    let first = series("furnace-01", 0, T0, 100, 100);
    let committed = store
        .write_batch_held(&first, &[], &Default::default())
        .await
        .expect("first batch");
    assert_eq!(
        ranges(&committed.held),
        vec![held("furnace-01", &[(0, 100)])]
    );
    let furnace_seen = committed.held[0].first_seen_us;
    let stored_seen: i64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM first_seen) * 1000000)::int8 FROM reading_coverage \
          WHERE device_id = 'furnace-01'",
    )
    .fetch_one(&pool)
    .await
    .expect("first_seen");
    assert_eq!(furnace_seen, stored_seen);

    let mut second = series("furnace-01", 200, T0 + 30_000, 50, 100);
    second.extend(series("press-01", 7, T0, 10, 250));
    let committed = store
        .write_batch_held(&second, &[], &Default::default())
        .await
        .expect("second batch");
    assert_eq!(
        ranges(&committed.held),
        vec![
            held("furnace-01", &[(0, 100), (200, 250)]),
            held("press-01", &[(7, 17)]),
        ]
    );
    assert_eq!(committed.held[0].first_seen_us, furnace_seen);
    assert!(
        committed.held[1].first_seen_us > furnace_seen,
        "first seen later"
    );

    let replay = store
        .write_batch_held(&first, &[], &Default::default())
        .await
        .expect("replay");
    assert_eq!(replay.outcome.duplicates, 100);
    assert_eq!(
        ranges(&replay.held),
        vec![held("furnace-01", &[(0, 100), (200, 250)])]
    );
    assert_eq!(replay.held[0].first_seen_us, furnace_seen);

    // More ranges than a confirmation carries: the lowest HELD_RANGES come back.
    let mut holes = Vec::new();
    for i in 0..30u64 {
        holes.extend(series(
            "press-02",
            1000 + i * 10,
            T0 + i as i64 * 1000,
            5,
            100,
        ));
    }
    let committed = store
        .write_batch_held(&holes, &[], &Default::default())
        .await
        .expect("a batch with holes");
    assert_eq!(committed.held[0].ranges.len() as i64, HELD_RANGES);
    assert_eq!(committed.held[0].ranges[1], (1010, 1015));
}

/// `reading_coverage.recovered`: readings that arrived below the highest already
/// committed (a resend filling a hole), counted once, not for a replay of what is held.
#[sqlx::test(migrations = "../migrations")]
async fn readings_that_fill_a_hole_count_as_recovered(pool: PgPool) {
    let store = Store::new(pool.clone());
    let recovered = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT recovered FROM reading_coverage WHERE device_id = 'furnace-01'",
        )
        .fetch_one(&pool)
        .await
        .expect("recovered")
    };
    store
        .write_batch(&series("furnace-01", 0, T0, 100, 100))
        .await
        .expect("first");
    store
        .write_batch(&series("furnace-01", 200, T0 + 20_000, 100, 100))
        .await
        .expect("above a hole");
    assert_eq!(recovered(pool.clone()).await, 0, "nothing filled yet");

    // Half the hole, with a replay of held readings and new ones above in the same batch.
    let mut batch = series("furnace-01", 100, T0 + 10_000, 50, 100);
    batch.extend(series("furnace-01", 250, T0 + 25_000, 100, 100));
    store.write_batch(&batch).await.expect("half the hole");
    assert_eq!(recovered(pool.clone()).await, 50);

    store
        .write_batch(&series("furnace-01", 100, T0 + 10_000, 100, 100))
        .await
        .expect("the rest of the hole, and a replay");
    assert_eq!(recovered(pool.clone()).await, 100);
    assert_eq!(coverage(&pool).await[0].1, "{[0,350)}");
}
