//! The PostgreSQL write path's coverage (see tests/store.rs): which sequence numbers each
//! commit holds, returned after every batch, and holes filled counted as recovered.
//!
//! Each `#[sqlx::test]` gets a fresh database with every migration applied (see
//! tests/schema.rs).

mod support;

use cloud_ingester::coverage::{Held, HELD_RANGES};
use cloud_ingester::store::Store;
use protocol::BootId;
use sqlx::postgres::PgPool;
use sqlx::types::chrono::{DateTime, Utc};
use support::store::{series, BOOT, T0};

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
