//! Least privilege (migrations/*_roles.sql): the pipeline runs in full as a login of
//! `telemetry_ingester`, which cannot read the gateway registry or change the schema; a
//! login of `telemetry_operator` reads and acknowledges alerts but writes no readings;
//! a login of `telemetry_bridge` reads the gateway registry and nothing else; the
//! ingester refuses to start as a superuser unless told to. The logins are the stack's
//! (`scripts/stack.sh` makes them: DATABASE_URL_INGESTER, _OPERATOR and _REGISTRY).

mod support;

use std::time::Duration;

use cloud_ingester::app::Ingester;
use cloud_ingester::config::IngesterConfig;
use service::clock::now_ms;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use support::ingester::{config, count_rows, idempotent_producer, start_config};
use support::{create_topics, frame, produce};

/// A pool on the test's database as the login that `variable` names.
async fn login_pool(owner: &PgPool, variable: &str) -> PgPool {
    let url = std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run scripts/stack.sh up and load .stack/env")
    });
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(owner)
        .await
        .unwrap();
    let (server, _) = url.rsplit_once('/').expect("a URL ending in /database");
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&format!("{server}/{database}"))
        .await
        .unwrap()
}

/// Whether `sql` is refused for want of privilege (and only for that).
async fn denied(pool: &PgPool, sql: &str) -> bool {
    match sqlx::query(sql).execute(pool).await {
        Ok(_) => false,
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("42501"), "{sql}: {e}");
            true
        }
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_pipeline_runs_as_an_ingester_login_that_cannot_touch_gateways_or_the_schema(
    pool: PgPool,
) {
    let ingester = login_pool(&pool, "DATABASE_URL_INGESTER").await;
    let (topic, dlq) = (testkit::unique_name("data"), testkit::unique_name("dlq"));
    create_topics(&[&topic, &dlq]).await;
    let base = now_ms() - 60_000;
    let records: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| {
            (
                "furnace-01".to_owned(),
                frame("furnace-01", &[0], i * 50, 50, base + i * 500),
            )
        })
        .collect();
    produce(&topic, &records).await;
    let running = start_config(
        &config(&topic, &dlq, &testkit::unique_name("group")),
        &ingester,
        None,
        idempotent_producer(),
    )
    .await;
    running.wait_records(10, Duration::from_secs(60)).await;
    let stats = running.stats.snapshot();
    running.stop().await;
    assert_eq!(stats.store_errors, 0, "{stats:?}");
    assert_eq!(count_rows(&pool).await, 500);
    let covered: i64 = sqlx::query_scalar("SELECT count(*) FROM reading_coverage")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(covered > 0);

    // A day's partition, made through the owner's function.
    let made: i32 = sqlx::query_scalar(
        "SELECT ensure_sensor_readings_partitions((now() AT TIME ZONE 'UTC')::date + 60, 1)",
    )
    .fetch_one(&ingester)
    .await
    .unwrap();
    assert_eq!(made, 1);
    for sql in [
        "SELECT * FROM gateways",
        "SELECT * FROM gateway_devices",
        "CREATE TABLE intruder (x int)",
        "DELETE FROM sensor_readings",
        "INSERT INTO devices (device_id, name, kind, site, line) VALUES ('x', 'x', 'x', 'x', 'x')",
        "SELECT drop_sensor_readings_partitions_before('2999-01-01')",
    ] {
        assert!(denied(&ingester, sql).await, "allowed: {sql}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn an_operator_login_reads_and_acknowledges_but_writes_no_readings(pool: PgPool) {
    let operator = login_pool(&pool, "DATABASE_URL_OPERATOR").await;
    sqlx::query(
        "INSERT INTO alerts (device_id, channel_id, rule, severity, value, threshold, message)
         VALUES ('furnace-01', 0, 'high', 'critical', 900, 850, 'hot')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let updated = sqlx::query(
        "UPDATE alerts SET state = 'acknowledged', acknowledged_at = now(), acknowledged_by = 'ops'
          WHERE state = 'open'",
    )
    .execute(&operator)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(&operator)
        .await
        .unwrap();
    assert!(devices > 0);
    for sql in [
        "INSERT INTO sensor_readings (device_id, ts, boot_id, seq, channel_id, value, clock_synced)
         VALUES ('furnace-01', now(), 1, 0, 0, 1, true)",
        "DELETE FROM alerts",
        "SELECT * FROM gateways",
        "UPDATE reading_coverage SET first_seen = now()",
    ] {
        assert!(denied(&operator, sql).await, "allowed: {sql}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_registry_login_reads_the_gateways_and_nothing_else(pool: PgPool) {
    gateways::registry::add(&pool, "test", "pi-a", &["furnace-01".to_owned()])
        .await
        .unwrap();
    let bridge = login_pool(&pool, "DATABASE_URL_REGISTRY").await;
    let keys = gateways::registry::device_keys(&bridge, "furnace-01")
        .await
        .unwrap();
    assert_eq!(keys.map(|k| k.gateway).as_deref(), Some("pi-a"));
    assert!(gateways::registry::credentials(&bridge, "pi-a")
        .await
        .unwrap()
        .is_some());
    for sql in [
        "UPDATE gateways SET enabled = false",
        "DELETE FROM gateway_devices",
        "SELECT * FROM sensor_readings",
        "SELECT * FROM alerts",
    ] {
        assert!(denied(&bridge, sql).await, "allowed: {sql}");
    }
}

#[tokio::test]
async fn the_ingester_refuses_a_superuser_unless_told_to() {
    let postgres = testkit::Postgres::start();
    let mut config = IngesterConfig::default();
    config.database.url = postgres.url("postgres");
    let Err(error) = Ingester::start(config).await else {
        panic!("the ingester started as a superuser");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains("a superuser") && error.contains("database.allow_superuser"),
        "{error}"
    );
}
