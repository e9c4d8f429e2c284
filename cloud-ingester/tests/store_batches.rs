//! The PostgreSQL write path (see tests/store.rs) around its batches: day partitions are
//! the UTC ones and retention drops whole days, a failed batch leaves nothing behind, the
//! dedup path, concurrent writers, and the events log.
//!
//! Each `#[sqlx::test]` gets a fresh database with every migration applied (see
//! tests/schema.rs).

mod support;

use cloud_ingester::rows::Row;
use cloud_ingester::store::{
    BatchOutcome, EventLevel, InvalidRow, Store, StoreError, WritePath, DEDUP_STREAK,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use support::store::{count, day, expected_stats, outcome, series, stats, utc_ms, T0};

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
    assert_the_only_rows_after_a_plain_batch(&store, &pool, &next).await;
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
    assert_the_only_rows_after_a_plain_batch(&store, &pool, &second).await;
}

/// Writes `rows` into tables that hold none, by the plain path: afterwards the tables
/// hold exactly those rows and their statistics.
async fn assert_the_only_rows_after_a_plain_batch(store: &Store, pool: &PgPool, rows: &[Row]) {
    assert_eq!(
        store.write_batch(rows).await.expect("write the batch"),
        outcome(rows.len() as u64, 0, WritePath::Plain)
    );
    assert_eq!(
        count(pool, "SELECT count(*) FROM sensor_readings").await,
        rows.len() as i64
    );
    assert_eq!(stats(pool).await, expected_stats(rows));
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
