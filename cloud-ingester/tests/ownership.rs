//! Partition leases in PostgreSQL (`ownership`): instances share the partitions evenly,
//! a dead instance's partitions are taken once its lease expires, a clean stop hands them
//! over at once, and a write under a lease that passed to another instance is refused
//! and stores nothing.

use std::collections::BTreeMap;

use cloud_ingester::ownership::{Ownership, Progress};
use cloud_ingester::rows::Row;
use cloud_ingester::store::{Store, StoreError};
use sqlx::PgPool;

const GROUP: &str = "ingest";
const TOPIC: &str = "sensors-data";

fn member(pool: &PgPool, name: &str) -> Ownership {
    Ownership::new(pool.clone(), GROUP, TOPIC, name)
}

fn held(ownership: &Ownership) -> Vec<i32> {
    ownership.held().keys().copied().collect()
}

/// What the table says: (partition, owner, next offset).
async fn table(pool: &PgPool) -> Vec<(i32, Option<String>, Option<i64>)> {
    sqlx::query_as("SELECT partition, owner, next_offset FROM ingest_partitions ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Makes `member`'s leases and heartbeat look as old as a dead instance's.
async fn expire(pool: &PgPool, member: &str) {
    sqlx::query(
        "UPDATE ingest_partitions SET lease_until = now() - interval '1 second' WHERE owner = $1",
    )
    .bind(member)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE ingest_members SET seen_at = now() - interval '1 hour' WHERE member = $1")
        .bind(member)
        .execute(pool)
        .await
        .unwrap();
}

fn row(seq: i64) -> Row {
    Row {
        device_id: "press-01".to_owned(),
        boot_id: 1,
        seq,
        ts_ms: 1_790_000_000_000 + seq,
        value: 1.0,
        channel_id: 0,
        quality: 0,
        clock_synced: true,
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn members_share_the_partitions_and_a_clean_leave_hands_them_over(pool: PgPool) {
    let mut a = member(&pool, "a");
    a.register_partitions(3).await.unwrap();
    let change = a.balance().await.unwrap();
    assert_eq!(change.claimed, vec![0, 1, 2], "alone, it takes them all");

    let mut b = member(&pool, "b");
    assert!(
        b.balance().await.unwrap().claimed.is_empty(),
        "none is free yet"
    );
    let change = a.balance().await.unwrap();
    assert_eq!(change.released, vec![2], "two members: at most two each");
    assert_eq!(b.balance().await.unwrap().claimed, vec![2]);
    assert_eq!((held(&a), held(&b)), (vec![0, 1], vec![2]));
    assert!(a.balance().await.unwrap().is_empty(), "stable once shared");
    assert!(b.balance().await.unwrap().is_empty(), "stable once shared");

    a.leave().await.unwrap();
    assert_eq!(b.balance().await.unwrap().claimed, vec![0, 1]);
    assert_eq!(held(&b), vec![0, 1, 2]);
    let owners: Vec<_> = table(&pool).await.into_iter().map(|r| r.1).collect();
    assert_eq!(owners, vec![Some("b".to_owned()); 3]);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_dead_members_partitions_are_taken_once_its_lease_expires(pool: PgPool) {
    let mut dead = member(&pool, "dead");
    dead.register_partitions(2).await.unwrap();
    dead.balance().await.unwrap();
    let mut heir = member(&pool, "heir");
    assert!(
        heir.balance().await.unwrap().claimed.is_empty(),
        "a live lease is never taken"
    );
    expire(&pool, "dead").await;
    assert_eq!(heir.balance().await.unwrap().claimed, vec![0, 1]);
    let members: Vec<String> = sqlx::query_scalar("SELECT member FROM ingest_members")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(members, vec!["heir"], "a heartbeat an hour old is cleared");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_write_under_a_lost_lease_stores_nothing_and_moves_no_offset(pool: PgPool) {
    let store = Store::new(pool.clone());
    let mut old = member(&pool, "old");
    old.register_partitions(1).await.unwrap();
    old.balance().await.unwrap();
    let first = old.progress(&BTreeMap::from([(0, 9)]));
    store
        .write_batch_with_alerts(&[row(0)], &[], &first)
        .await
        .unwrap();
    old.committed(&first);
    assert_eq!(old.held()[&0].next_offset, Some(10));

    // The old owner stalls; its lease expires and another instance takes the partition.
    expire(&pool, "old").await;
    let mut new = member(&pool, "new");
    new.balance().await.unwrap();
    assert_eq!(
        new.held()[&0].next_offset,
        Some(10),
        "starts where it was stored"
    );

    let late = old.progress(&BTreeMap::from([(0, 19)]));
    let refused = store.write_batch_with_alerts(&[row(1)], &[], &late).await;
    assert!(
        matches!(&refused, Err(StoreError::LeaseLost { partitions }) if partitions == &[0]),
        "{refused:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sensor_readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the fenced batch's row was rolled back");
    let coverage: String = sqlx::query_scalar("SELECT seqs::text FROM reading_coverage")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(coverage, "{[0,1)}", "and so was its coverage");
    assert_eq!(table(&pool).await[0].2, Some(10));
    let change = old.balance().await.unwrap();
    assert_eq!(
        change.lost,
        vec![0],
        "the old owner learns it lost the partition"
    );

    // A batch of dead letters alone (no rows) still moves its offsets.
    let only_offsets = new.progress(&BTreeMap::from([(0, 29)]));
    store
        .write_batch_with_alerts(&[], &[], &only_offsets)
        .await
        .unwrap();
    assert_eq!(table(&pool).await[0].2, Some(30));
    assert!(Progress::default().is_empty());
}
