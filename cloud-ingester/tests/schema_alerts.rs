//! The schema's alert lifecycle (see tests/schema.rs): one unresolved alert per device,
//! channel and rule, consistent lifecycle rows, and `data_loss` alerts per device.
//!
//! Each `#[sqlx::test]` gets a fresh database, created from `DATABASE_URL` (a role that
//! may create databases) with every migration applied, so the tests are independent and
//! "the migrations apply to an empty database" is checked by all of them.

mod support;

use sqlx::postgres::PgPool;
use support::schema::{assert_check_violation, sqlstate};

#[sqlx::test(migrations = "../migrations")]
async fn one_unresolved_alert_per_device_channel_and_rule(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("connection");
    let open =
        "INSERT INTO alerts (device_id, channel_id, rule, severity, value, threshold, message) \
                VALUES ('furnace-01', 0, 'high', 'warning', 905, 900, 'above warn_high') \
                RETURNING alert_id";

    let first: i64 = sqlx::query_scalar(open)
        .fetch_one(&mut *conn)
        .await
        .expect("open the first alert");
    let second = sqlx::query_scalar::<_, i64>(open)
        .fetch_one(&mut *conn)
        .await;
    let (code, constraint) = sqlstate(second);
    assert_eq!(code, "23505");
    assert_eq!(constraint.as_deref(), Some("alerts_one_unresolved"));

    // The partial index works as an ON CONFLICT arbiter when the predicate is repeated.
    let upsert = sqlx::query(
        "INSERT INTO alerts (device_id, channel_id, rule, severity, value, threshold) \
         VALUES ('furnace-01', 0, 'high', 'critical', 960, 950) \
         ON CONFLICT (device_id, channel_id, rule) WHERE state <> 'resolved' \
         DO UPDATE SET severity = EXCLUDED.severity, value = EXCLUDED.value, \
                       threshold = EXCLUDED.threshold",
    )
    .execute(&mut *conn)
    .await
    .expect("escalate by upsert");
    assert_eq!(upsert.rows_affected(), 1);
    let (count, severity): (i64, String) =
        sqlx::query_as("SELECT count(*), max(severity::text) FROM alerts")
            .fetch_one(&mut *conn)
            .await
            .expect("count alerts");
    assert_eq!((count, severity.as_str()), (1, "critical"));

    // Acknowledged is still unresolved.
    sqlx::query(
        "UPDATE alerts SET state = 'acknowledged', acknowledged_at = now(), \
         acknowledged_by = 'operator' WHERE alert_id = $1",
    )
    .bind(first)
    .execute(&mut *conn)
    .await
    .expect("acknowledge");
    assert_eq!(
        sqlstate(sqlx::query(open).execute(&mut *conn).await).0,
        "23505"
    );

    // Other rules and channels of the same device are independent.
    sqlx::query(
        "INSERT INTO alerts (device_id, channel_id, rule, severity) \
         VALUES ('furnace-01', 0, 'dropout', 'critical')",
    )
    .execute(&mut *conn)
    .await
    .expect("a dropout alert beside the high one");

    sqlx::query(
        "UPDATE alerts SET state = 'resolved', resolved_at = now(), resolved_value = 880 \
         WHERE alert_id = $1",
    )
    .bind(first)
    .execute(&mut *conn)
    .await
    .expect("resolve");
    let reopened: i64 = sqlx::query_scalar(open)
        .fetch_one(&mut *conn)
        .await
        .expect("a new alert once the first is resolved");
    assert_ne!(reopened, first);
}

#[sqlx::test(migrations = "../migrations")]
async fn alert_lifecycle_checks_reject_inconsistent_rows(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("connection");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (device_id, channel_id, rule, severity, value, threshold) \
         VALUES ('press-01', 0, 'low', 'warning', 140, 150) RETURNING alert_id",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("open an alert");

    let update = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).bind(id).execute(&pool).await }
    };
    assert_check_violation(
        update("UPDATE alerts SET state = 'resolved' WHERE alert_id = $1").await,
        "alerts_resolved_consistent",
    );
    assert_check_violation(
        update("UPDATE alerts SET resolved_at = now() WHERE alert_id = $1").await,
        "alerts_resolved_consistent",
    );
    assert_check_violation(
        update("UPDATE alerts SET state = 'acknowledged' WHERE alert_id = $1").await,
        "alerts_acknowledged_consistent",
    );
    assert_check_violation(
        update(
            "UPDATE alerts SET state = 'acknowledged', acknowledged_at = now() WHERE alert_id = $1",
        )
        .await,
        "alerts_acknowledged_consistent",
    );
    assert_check_violation(
        update(
            "UPDATE alerts SET state = 'resolved', resolved_at = opened_at - interval '1 second' \
             WHERE alert_id = $1",
        )
        .await,
        "alerts_timestamps_order",
    );
    assert_check_violation(
        sqlx::query(
            "INSERT INTO alerts (device_id, channel_id, rule, severity, value, threshold) \
             VALUES ('press-01', 0, 'sideways', 'warning', 1, 1)",
        )
        .execute(&mut *conn)
        .await,
        "alerts_rule_known",
    );
    assert_check_violation(
        sqlx::query(
            "INSERT INTO alerts (device_id, channel_id, rule, severity) \
             VALUES ('press-01', 0, 'high', 'warning')",
        )
        .execute(&mut *conn)
        .await,
        "alerts_threshold_rule_has_value",
    );
    // An alert needs a configured channel.
    let unknown_channel = sqlx::query(
        "INSERT INTO alerts (device_id, channel_id, rule, severity) \
         VALUES ('press-01', 7, 'dropout', 'warning')",
    )
    .execute(&mut *conn)
    .await;
    assert_eq!(sqlstate(unknown_channel).0, "23503");

    // The consistent path still works: acknowledge, then resolve.
    update(
        "UPDATE alerts SET state = 'acknowledged', acknowledged_at = now(), \
         acknowledged_by = 'operator' WHERE alert_id = $1",
    )
    .await
    .expect("acknowledge");
    update(
        "UPDATE alerts SET state = 'resolved', resolved_at = now(), resolved_value = 160 \
         WHERE alert_id = $1",
    )
    .await
    .expect("resolve");
    let state: String = sqlx::query_scalar("SELECT state::text FROM alerts WHERE alert_id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .expect("read state");
    assert_eq!(state, "resolved");
}

/// `data_loss` is about a device, not a channel: its alerts have no channel, at most one
/// is unresolved per device, and only that rule may leave the channel out.
#[sqlx::test(migrations = "../migrations")]
async fn a_data_loss_alert_is_one_per_device_without_a_channel(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("connection");
    let open = "INSERT INTO alerts (device_id, rule, severity, value, threshold, message) \
                VALUES ('furnace-01', 'data_loss', 'warning', 300, 1, '300 readings missing') \
                ON CONFLICT (device_id, channel_id, rule) WHERE state <> 'resolved' \
                DO UPDATE SET value = EXCLUDED.value \
                RETURNING alert_id";
    let first: i64 = sqlx::query_scalar(open)
        .fetch_one(&mut *conn)
        .await
        .expect("a device-level data_loss alert");
    let again: i64 = sqlx::query_scalar(open)
        .fetch_one(&mut *conn)
        .await
        .expect("the upsert meets the unresolved one");
    assert_eq!(again, first, "one unresolved data_loss per device");
    let plain = sqlx::query(
        "INSERT INTO alerts (device_id, rule, severity) VALUES ('furnace-01', 'data_loss', 'warning')",
    )
    .execute(&mut *conn)
    .await;
    let (code, constraint) = sqlstate(plain);
    assert_eq!(code, "23505");
    assert_eq!(constraint.as_deref(), Some("alerts_one_unresolved"));
    sqlx::query(
        "INSERT INTO alerts (device_id, rule, severity) VALUES ('press-01', 'data_loss', 'warning')",
    )
    .execute(&mut *conn)
    .await
    .expect("another device's data_loss beside it");

    // Only data_loss goes without a channel, and data_loss never has one.
    assert_check_violation(
        sqlx::query(
            "INSERT INTO alerts (device_id, rule, severity) VALUES ('press-01', 'dropout', 'warning')",
        )
        .execute(&mut *conn)
        .await,
        "alerts_channel_iff_channel_rule",
    );
    assert_check_violation(
        sqlx::query(
            "INSERT INTO alerts (device_id, channel_id, rule, severity) \
             VALUES ('press-01', 0, 'data_loss', 'warning')",
        )
        .execute(&mut *conn)
        .await,
        "alerts_channel_iff_channel_rule",
    );
    // Without a channel, the device must still be registered.
    let unknown = sqlx::query(
        "INSERT INTO alerts (device_id, rule, severity) VALUES ('ghost-01', 'data_loss', 'warning')",
    )
    .execute(&mut *conn)
    .await;
    assert_eq!(sqlstate(unknown).0, "23503");

    // Resolved, it makes room for the next one; deleting the device takes its alerts.
    sqlx::query(
        "UPDATE alerts SET state = 'resolved', resolved_at = now() \
          WHERE device_id = 'furnace-01' AND channel_id IS NOT DISTINCT FROM NULL \
            AND rule = 'data_loss' AND state <> 'resolved'",
    )
    .execute(&mut *conn)
    .await
    .expect("resolve by its key");
    let next: i64 = sqlx::query_scalar(open)
        .fetch_one(&mut *conn)
        .await
        .expect("a new data_loss once the first is resolved");
    assert_ne!(next, first);
    sqlx::query("DELETE FROM devices WHERE device_id = 'furnace-01'")
        .execute(&mut *conn)
        .await
        .expect("delete the device");
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alerts WHERE device_id = 'furnace-01'")
            .fetch_one(&mut *conn)
            .await
            .expect("count alerts");
    assert_eq!(left, 0);
}
