//! The PostgreSQL write path (`cloud_ingester::store`) against a real PostgreSQL: what a
//! batch stores, that replays, overlaps and in-batch repeats add neither rows nor
//! statistics, and that hourly buckets are the UTC ones. Partitions, failures and the
//! events log are in tests/store_batches.rs, the coverage in tests/store_coverage.rs.
//!
//! Each `#[sqlx::test]` gets a fresh database with every migration applied (see
//! tests/schema.rs). Run with `DATABASE_URL=postgres://… cargo test -p cloud-ingester
//! --test store`.

mod support;

use cloud_ingester::rows::Row;
use cloud_ingester::store::{Store, WritePath};
use protocol::Quality;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::chrono::{DateTime, Utc};
use support::store::{
    count, day, expected_stats, outcome, readings, series, stats, utc_ms, BOOT, HOUR_MS, T0,
};

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
