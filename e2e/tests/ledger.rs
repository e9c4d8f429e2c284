//! The ledger must see what it exists to see: a healthy run tampered with afterwards
//! (rows deleted behind the pipeline's completeness report, a statistic changed, a
//! Redis value moved back) has to come out with exactly those breaches. Without this, a
//! ledger that counted nothing would pass every scenario.

use std::time::Duration;

use e2e::deployment::{BridgeMode, Deployment, Options};
use e2e::ledger::{Ledger, LossPolicy};

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_run_shows_each_breach() {
    let options = Options {
        seed: 7,
        bridge: BridgeMode::Client,
        queue: None,
        rate: e2e::workload::SEED_RATE,
    };
    let deployment = Deployment::start(options).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let finished = deployment.finish().await.unwrap();
    let clean = Ledger::take("clean", 7, &finished).await.unwrap();
    assert!(clean.produced > 1000, "{clean}");
    assert_eq!(
        clean.breaches(LossPolicy::None, 0),
        Vec::<String>::new(),
        "{clean}"
    );

    let db = &finished.deployment.db;
    let deleted = sqlx::query(
        "DELETE FROM sensor_readings
          WHERE (device_id, boot_id, seq) IN (
                SELECT device_id, boot_id, seq FROM sensor_readings
                 WHERE device_id = 'press-01' ORDER BY seq LIMIT 3)",
    )
    .execute(db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(deleted, 3);
    sqlx::query(
        "UPDATE device_stats_hourly SET count = count + 1
          WHERE (device_id, channel_id) = ('furnace-01', 0)",
    )
    .execute(db)
    .await
    .unwrap();
    let redis = redis::Client::open(finished.deployment.redis.url()).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg("plant:latest:compressor-01")
        .arg("0")
        .arg(r#"{"ts":1,"v":0,"q":0,"boot":"0000000000000000","seq":0,"synced":true}"#)
        .query_async(&mut redis)
        .await
        .unwrap();

    let tampered = Ledger::take("tampered", 7, &finished).await.unwrap();
    println!("{tampered}");
    assert_eq!(tampered.lost, 3);
    assert_eq!(
        tampered.unpublished, 0,
        "the deleted rows had reached the broker"
    );
    // The changed statistic, and press-01's hour, which no longer matches its rows (a
    // run across an hour boundary has two hours of furnace-01).
    let mismatched: std::collections::BTreeSet<&str> = tampered
        .stats_mismatches
        .iter()
        .map(|m| m.split('/').next().unwrap_or_default())
        .collect();
    assert_eq!(
        mismatched,
        ["furnace-01", "press-01"].into(),
        "{:?}",
        tampered.stats_mismatches
    );
    assert_eq!(
        tampered.redis_mismatches.len(),
        1,
        "{:?}",
        tampered.redis_mismatches
    );
    // The pipeline's completeness report, read before the rows were deleted, no longer
    // matches them: press-01's boot, in its counts and its holes.
    assert_eq!(clean.completeness_mismatches, Vec::<String>::new());
    assert!(
        !tampered.completeness_mismatches.is_empty()
            && tampered
                .completeness_mismatches
                .iter()
                .all(|m| m.starts_with("press-01 boot")),
        "{:?}",
        tampered.completeness_mismatches
    );
    let breaches = tampered.breaches(LossPolicy::None, 0);
    assert_eq!(breaches.len(), 4, "{breaches:#?}");
    // A dead letter that should have been there, and was not.
    assert_eq!(tampered.breaches(LossPolicy::None, 1).len(), 5);
}
