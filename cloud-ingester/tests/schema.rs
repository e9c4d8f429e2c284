//! Behaviour of the database schema in `migrations/`: seed data, deduplication of
//! replayed readings, day partitions and their maintenance functions, the alert
//! lifecycle, hourly statistics and the naming rules.
//!
//! Each `#[sqlx::test]` gets a fresh database, created from `DATABASE_URL` (a role that
//! may create databases) with every migration applied, so the tests are independent and
//! "the migrations apply to an empty database" is checked by all of them.
//!
//! Run with `DATABASE_URL=postgres://… cargo test -p cloud-ingester --test schema`.

use std::collections::BTreeSet;

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::types::chrono::{DateTime, NaiveDate, Utc};

const SEED_DEVICES: [&str; 5] = [
    "cnc-spindle-01",
    "compressor-01",
    "furnace-01",
    "paint-booth-01",
    "press-01",
];

/// SQLSTATE of a database error, or a panic naming what failed instead.
fn sqlstate(result: Result<impl std::fmt::Debug, sqlx::Error>) -> (String, Option<String>) {
    match result {
        Ok(value) => panic!("statement succeeded ({value:?}), expected a database error"),
        Err(sqlx::Error::Database(db)) => (
            db.code().map(|c| c.into_owned()).unwrap_or_default(),
            db.constraint().map(str::to_owned),
        ),
        Err(other) => panic!("expected a database error, got {other}"),
    }
}

/// Asserts that `result` is a CHECK violation (23514) of the named constraint.
fn assert_check_violation(result: Result<impl std::fmt::Debug, sqlx::Error>, constraint: &str) {
    let (code, name) = sqlstate(result);
    assert_eq!(code, "23514", "expected a check violation of {constraint}");
    assert_eq!(name.as_deref(), Some(constraint));
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad test timestamp {s}: {e}"))
        .with_timezone(&Utc)
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_else(|e| panic!("bad test day {s}: {e}"))
}

/// Inserts one reading the way the ingester does (a replay is a no-op); returns the
/// number of rows inserted (0 or 1).
async fn insert_reading(
    conn: &mut PgConnection,
    device: &str,
    boot_id: i64,
    seq: i64,
    ts: DateTime<Utc>,
    value: f32,
) -> u64 {
    sqlx::query(
        "INSERT INTO sensor_readings \
             (device_id, boot_id, seq, channel_id, ts, value, quality, clock_synced) \
         VALUES ($1, $2, $3, 0, $4, $5, 0, true) \
         ON CONFLICT (device_id, boot_id, seq, ts) DO NOTHING",
    )
    .bind(device)
    .bind(boot_id)
    .bind(seq)
    .bind(ts)
    .bind(value)
    .execute(conn)
    .await
    .expect("insert reading")
    .rows_affected()
}

/// Which table each reading of `device` sits in, by seq.
async fn partitions_of(conn: &mut PgConnection, device: &str) -> Vec<(i64, String)> {
    sqlx::query_as(
        "SELECT seq, tableoid::regclass::text FROM sensor_readings \
         WHERE device_id = $1 ORDER BY seq",
    )
    .bind(device)
    .fetch_all(conn)
    .await
    .expect("list readings")
}

/// Names of the partitions of sensor_readings.
async fn partition_names(conn: &mut PgConnection) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT inhrelid::regclass::text FROM pg_inherits \
         WHERE inhparent = 'sensor_readings'::regclass",
    )
    .fetch_all(conn)
    .await
    .expect("list partitions")
    .into_iter()
    .collect()
}

async fn count_readings(conn: &mut PgConnection, table: &str) -> i64 {
    // `table` is always a literal from this file.
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(conn)
        .await
        .expect("count readings")
}

#[sqlx::test(migrations = "../migrations")]
async fn migrations_are_recorded_and_rerunning_them_is_a_noop(pool: PgPool) {
    let migrator = sqlx::migrate!("../migrations");

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
    let mut files: Vec<i64> = std::fs::read_dir(dir)
        .expect("read migrations directory")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .into_string()
                .expect("UTF-8 name")
        })
        .filter(|name| name.ends_with(".sql"))
        .map(|name| {
            let version = name.split('_').next().expect("version prefix");
            version
                .parse()
                .unwrap_or_else(|_| panic!("{name}: no numeric version prefix"))
        })
        .collect();
    files.sort_unstable();
    assert!(
        files.len() >= 6,
        "expected the schema in several migration files, found {files:?}"
    );
    assert_eq!(
        migrator.iter().count(),
        files.len(),
        "every .sql file is a migration"
    );

    let applied = |pool: PgPool| async move {
        sqlx::query_as::<_, (i64, bool, DateTime<Utc>)>(
            "SELECT version, success, installed_on FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&pool)
        .await
        .expect("read _sqlx_migrations")
    };
    let before = applied(pool.clone()).await;
    let versions: Vec<i64> = before.iter().map(|(v, _, _)| *v).collect();
    assert_eq!(
        versions, files,
        "_sqlx_migrations lists every migration file"
    );
    assert!(before.iter().all(|(_, success, _)| *success));

    let mut conn = pool.acquire().await.expect("connection");
    let partitions_before = partition_names(&mut conn).await;
    let devices_before: i64 = sqlx::query_scalar("SELECT count(*) FROM device_channels")
        .fetch_one(&mut *conn)
        .await
        .expect("count channels");

    migrator
        .run(&pool)
        .await
        .expect("re-running the migrations");

    assert_eq!(applied(pool.clone()).await, before, "nothing re-applied");
    assert_eq!(partition_names(&mut conn).await, partitions_before);
    let devices_after: i64 = sqlx::query_scalar("SELECT count(*) FROM device_channels")
        .fetch_one(&mut *conn)
        .await
        .expect("count channels");
    assert_eq!(
        devices_after, devices_before,
        "seed data not inserted twice"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn the_five_seed_devices_have_their_channels_and_thresholds(pool: PgPool) {
    let devices: Vec<(String, String, String, bool)> =
        sqlx::query_as("SELECT device_id, kind, site, enabled FROM devices ORDER BY device_id")
            .fetch_all(&pool)
            .await
            .expect("list devices");
    let ids: Vec<&str> = devices.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(ids, SEED_DEVICES);
    assert!(devices
        .iter()
        .all(|(_, _, site, enabled)| site == "plant1" && *enabled));
    let kinds: BTreeSet<&str> = devices.iter().map(|(_, kind, ..)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "cnc_spindle",
            "compressor",
            "furnace",
            "hydraulic_press",
            "paint_booth"
        ])
    );

    let per_device: Vec<(String, i64)> = sqlx::query_as(
        "SELECT device_id, count(*) FROM device_channels GROUP BY device_id ORDER BY device_id",
    )
    .fetch_all(&pool)
    .await
    .expect("count channels");
    assert_eq!(
        per_device,
        [
            ("cnc-spindle-01".to_owned(), 2),
            ("compressor-01".to_owned(), 2),
            ("furnace-01".to_owned(), 1),
            ("paint-booth-01".to_owned(), 2),
            ("press-01".to_owned(), 1),
        ]
    );

    type Thresholds = (
        String,
        String,
        i32,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
    );
    let channel = |device: &'static str, channel: i16| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, Thresholds>(
                "SELECT name, unit, sample_period_ms, warn_low, warn_high, crit_low, crit_high \
                 FROM device_channels WHERE device_id = $1 AND channel_id = $2",
            )
            .bind(device)
            .bind(channel)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{device} channel {channel}: {e}"))
        }
    };
    assert_eq!(
        channel("furnace-01", 0).await,
        (
            "temperature".into(),
            "°C".into(),
            1000,
            Some(780.0),
            Some(900.0),
            Some(750.0),
            Some(950.0)
        )
    );
    assert_eq!(
        channel("cnc-spindle-01", 0).await,
        (
            "vibration_rms".into(),
            "mm/s".into(),
            100,
            None,
            Some(7.1),
            None,
            Some(11.2)
        )
    );
    assert_eq!(
        channel("press-01", 0).await,
        (
            "pressure".into(),
            "bar".into(),
            200,
            Some(150.0),
            Some(250.0),
            Some(120.0),
            Some(280.0)
        )
    );

    // Every seed channel's nominal value sits inside its warn band and its range.
    let outside: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM device_channels \
         WHERE NOT (nominal BETWEEN range_min AND range_max) \
            OR nominal <= coalesce(warn_low, '-Infinity') \
            OR nominal >= coalesce(warn_high, 'Infinity')",
    )
    .fetch_one(&pool)
    .await
    .expect("check nominal values");
    assert_eq!(outside, 0);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_replayed_reading_is_stored_once(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("connection");
    let now = Utc::now();
    let boot = i64::MIN + 7; // boot ids are random 64-bit values, negative ones included

    assert_eq!(
        insert_reading(&mut conn, "furnace-01", boot, 41, now, 851.5).await,
        1
    );
    assert_eq!(
        insert_reading(&mut conn, "furnace-01", boot, 41, now, 851.5).await,
        0
    );
    // Without a conflict target, as a COPY-from-staging insert would write it.
    let untargeted = sqlx::query(
        "INSERT INTO sensor_readings \
             (device_id, boot_id, seq, channel_id, ts, value, quality, clock_synced) \
         VALUES ('furnace-01', $1, 41, 0, $2, 851.5, 0, true) ON CONFLICT DO NOTHING",
    )
    .bind(boot)
    .bind(now)
    .execute(&mut *conn)
    .await
    .expect("untargeted replay");
    assert_eq!(untargeted.rows_affected(), 0);
    assert_eq!(count_readings(&mut conn, "sensor_readings").await, 1);

    // Differing only in seq: a different reading.
    assert_eq!(
        insert_reading(&mut conn, "furnace-01", boot, 42, now, 851.5).await,
        1
    );
    // Same seq in another boot, or of another device: different readings too.
    assert_eq!(
        insert_reading(&mut conn, "furnace-01", boot + 1, 41, now, 851.5).await,
        1
    );
    assert_eq!(
        insert_reading(&mut conn, "press-01", boot, 41, now, 851.5).await,
        1
    );
    assert_eq!(count_readings(&mut conn, "sensor_readings").await, 4);

    // A plain INSERT of a duplicate is a unique violation, not a second row.
    let duplicate = sqlx::query(
        "INSERT INTO sensor_readings \
             (device_id, boot_id, seq, channel_id, ts, value, quality, clock_synced) \
         VALUES ('furnace-01', $1, 41, 0, $2, 851.5, 0, true)",
    )
    .bind(boot)
    .bind(now)
    .execute(&mut *conn)
    .await;
    assert_eq!(sqlstate(duplicate).0, "23505");

    // NaN is a legal value (sensor fault), and survives the round trip.
    assert_eq!(
        insert_reading(&mut conn, "furnace-01", boot, 43, now, f32::NAN).await,
        1
    );
    let value: f32 = sqlx::query_scalar("SELECT value FROM sensor_readings WHERE seq = 43")
        .fetch_one(&mut *conn)
        .await
        .expect("read NaN back");
    assert!(value.is_nan());
}

#[sqlx::test(migrations = "../migrations")]
async fn readings_land_in_their_day_partition_or_the_default(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("connection");
    // Partition bounds are UTC midnights whatever the session time zone.
    sqlx::query("SET TimeZone = 'Pacific/Kiritimati'")
        .execute(&mut *conn)
        .await
        .expect("set time zone");

    let now = Utc::now();
    insert_reading(&mut conn, "furnace-01", 1, 1, now, 850.0).await;
    insert_reading(
        &mut conn,
        "furnace-01",
        1,
        2,
        utc("2100-01-01T12:00:00Z"),
        850.0,
    )
    .await;
    // An unsynchronised clock that starts in 1970.
    insert_reading(
        &mut conn,
        "furnace-01",
        1,
        3,
        utc("1970-01-01T00:00:05Z"),
        850.0,
    )
    .await;

    let today = format!("sensor_readings_p{}", now.format("%Y%m%d"));
    assert_eq!(
        partitions_of(&mut conn, "furnace-01").await,
        [
            (1, today),
            (2, "sensor_readings_default".to_owned()),
            (3, "sensor_readings_default".to_owned()),
        ]
    );

    // The migration created yesterday .. today + 7 by the UTC calendar.
    let names = partition_names(&mut conn).await;
    let yesterday = now.date_naive().pred_opt().expect("a day before today");
    for day in yesterday.iter_days().take(9) {
        let name = format!("sensor_readings_p{}", day.format("%Y%m%d"));
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(names.contains("sensor_readings_default"));
}

#[sqlx::test(migrations = "../migrations")]
async fn creating_a_partition_moves_its_rows_out_of_the_default(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("connection");
    sqlx::query("SET TimeZone = 'America/Los_Angeles'")
        .execute(&mut *conn)
        .await
        .expect("set time zone");

    // 2099-06-15 has no partition yet: its rows go to the default partition.
    let day_rows = [
        "2099-06-15T00:00:00Z",
        "2099-06-15T07:30:00Z",
        "2099-06-15T23:59:59.999Z",
    ];
    for (seq, ts) in (1..).zip(day_rows) {
        insert_reading(&mut conn, "press-01", 9, seq, utc(ts), 210.0).await;
    }
    // Neighbours on either side of the day stay where they are.
    insert_reading(
        &mut conn,
        "press-01",
        9,
        10,
        utc("2099-06-14T23:59:59.999Z"),
        1.0,
    )
    .await;
    insert_reading(
        &mut conn,
        "press-01",
        9,
        11,
        utc("2099-06-16T00:00:00Z"),
        1.0,
    )
    .await;
    assert_eq!(
        count_readings(&mut conn, "sensor_readings_default").await,
        5
    );

    let created: bool = sqlx::query_scalar("SELECT ensure_sensor_readings_partition($1)")
        .bind(day("2099-06-15"))
        .fetch_one(&mut *conn)
        .await
        .expect("create partition");
    assert!(created);

    let expected: Vec<(i64, String)> = vec![
        (1, "sensor_readings_p20990615".into()),
        (2, "sensor_readings_p20990615".into()),
        (3, "sensor_readings_p20990615".into()),
        (10, "sensor_readings_default".into()),
        (11, "sensor_readings_default".into()),
    ];
    assert_eq!(partitions_of(&mut conn, "press-01").await, expected);
    assert_eq!(count_readings(&mut conn, "sensor_readings").await, 5);

    // Idempotent: nothing created, nothing moved.
    let again: bool = sqlx::query_scalar("SELECT ensure_sensor_readings_partition($1)")
        .bind(day("2099-06-15"))
        .fetch_one(&mut *conn)
        .await
        .expect("ensure partition again");
    assert!(!again);
    assert_eq!(partitions_of(&mut conn, "press-01").await, expected);

    // The new partition got the dedup index: a replay of a moved row is still a no-op.
    assert_eq!(
        insert_reading(&mut conn, "press-01", 9, 2, utc(day_rows[1]), 210.0).await,
        0
    );
    assert_eq!(
        count_readings(&mut conn, "sensor_readings_p20990615").await,
        3
    );

    // The run-of-days variant counts only what it created.
    let created: i32 = sqlx::query_scalar("SELECT ensure_sensor_readings_partitions($1, 3)")
        .bind(day("2099-06-14"))
        .fetch_one(&mut *conn)
        .await
        .expect("create a run of partitions");
    assert_eq!(created, 2, "06-14 and 06-16 are new, 06-15 existed");
    assert_eq!(
        partitions_of(&mut conn, "press-01").await,
        [
            (1, "sensor_readings_p20990615".into()),
            (2, "sensor_readings_p20990615".into()),
            (3, "sensor_readings_p20990615".into()),
            (10, "sensor_readings_p20990614".into()),
            (11, "sensor_readings_p20990616".into()),
        ]
    );
    assert_eq!(
        count_readings(&mut conn, "sensor_readings_default").await,
        0
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn retention_drops_whole_old_partitions_only(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("connection");
    // Bounds are read back from the catalog as text; unusual settings must not matter.
    sqlx::query("SET DateStyle = 'SQL, DMY'")
        .execute(&mut *conn)
        .await
        .expect("set date style");
    sqlx::query("SET TimeZone = 'Asia/Kolkata'")
        .execute(&mut *conn)
        .await
        .expect("set time zone");

    let created: i32 = sqlx::query_scalar("SELECT ensure_sensor_readings_partitions($1, 3)")
        .bind(day("2020-01-01"))
        .fetch_one(&mut *conn)
        .await
        .expect("create old partitions");
    assert_eq!(created, 3);
    for (seq, ts) in (1..).zip([
        "2020-01-01T12:00:00Z",
        "2020-01-02T23:59:59Z",
        "2020-01-03T00:00:00Z",
        "2019-12-31T23:00:00Z", // no partition: default
    ]) {
        insert_reading(&mut conn, "compressor-01", 5, seq, utc(ts), 55.0).await;
    }
    let recent = Utc::now();
    insert_reading(&mut conn, "compressor-01", 5, 5, recent, 55.0).await;
    let before = partition_names(&mut conn).await;

    let dropped: i32 = sqlx::query_scalar("SELECT drop_sensor_readings_partitions_before($1)")
        .bind(day("2020-01-03"))
        .fetch_one(&mut *conn)
        .await
        .expect("drop old partitions");
    assert_eq!(dropped, 2);

    let after = partition_names(&mut conn).await;
    let gone: BTreeSet<&str> = before.difference(&after).map(String::as_str).collect();
    assert_eq!(
        gone,
        BTreeSet::from(["sensor_readings_p20200101", "sensor_readings_p20200102"])
    );
    assert!(after.contains("sensor_readings_default"));
    let gone_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname IN \
         ('sensor_readings_p20200101', 'sensor_readings_p20200102')",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("look for dropped tables");
    assert_eq!(
        gone_tables, 0,
        "detached partitions are dropped, not left behind"
    );

    assert_eq!(
        partitions_of(&mut conn, "compressor-01").await,
        [
            (3, "sensor_readings_p20200103".to_owned()),
            (4, "sensor_readings_default".to_owned()),
            (5, format!("sensor_readings_p{}", recent.format("%Y%m%d"))),
        ]
    );

    let again: i32 = sqlx::query_scalar("SELECT drop_sensor_readings_partitions_before($1)")
        .bind(day("2020-01-03"))
        .fetch_one(&mut *conn)
        .await
        .expect("drop again");
    assert_eq!(again, 0);
    // The function pins its own settings without changing the session's.
    let style: String = sqlx::query_scalar("SHOW DateStyle")
        .fetch_one(&mut *conn)
        .await
        .expect("show DateStyle");
    assert_eq!(style, "SQL, DMY");
}

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

#[sqlx::test(migrations = "../migrations")]
async fn hourly_stats_need_hour_boundaries_and_merge_by_upsert(pool: PgPool) {
    let mut conn = pool.acquire().await.expect("connection");
    // A zone with a half-hour offset: its local hours are not UTC hours.
    sqlx::query("SET TimeZone = 'Asia/Kolkata'")
        .execute(&mut *conn)
        .await
        .expect("set time zone");

    let insert = "INSERT INTO device_stats_hourly \
                      (device_id, channel_id, hour, count, min, max, sum, sum_sq) \
                  VALUES ('furnace-01', 0, $1::timestamptz, $2, $3, $4, $5, $6)";
    let bad_hours = [
        "2026-11-30 10:30:00+00",
        "2026-11-30 10:00:00.000001+00",
        "2026-11-30 10:00:00", // a whole hour in Asia/Kolkata (+05:30) is 04:30 UTC
    ];
    for hour in bad_hours {
        let result = sqlx::query(insert)
            .bind(hour)
            .bind(1_i64)
            .bind(1.0_f64)
            .bind(1.0_f64)
            .bind(1.0_f64)
            .bind(1.0_f64)
            .execute(&mut *conn)
            .await;
        assert_check_violation(result, "device_stats_hourly_hour_boundary");
    }
    let invalid: [(i64, f64, f64, f64, &str); 3] = [
        (0, 1.0, 1.0, 1.0, "device_stats_hourly_count_positive"),
        (1, 2.0, 1.0, 1.0, "device_stats_hourly_min_max"),
        (1, 1.0, 1.0, f64::NAN, "device_stats_hourly_no_nan"),
    ];
    for (count, min, max, sum, constraint) in invalid {
        let result = sqlx::query(insert)
            .bind("2026-11-30 10:00:00+00")
            .bind(count)
            .bind(min)
            .bind(max)
            .bind(sum)
            .bind(1.0_f64)
            .execute(&mut *conn)
            .await;
        assert_check_violation(result, constraint);
    }

    // Two batches of the same UTC hour, written as 15:30 local time.
    let upsert = "INSERT INTO device_stats_hourly AS s \
                      (device_id, channel_id, hour, count, min, max, sum, sum_sq) \
                  VALUES ('furnace-01', 0, '2026-11-30 15:30:00+05:30', $1, $2, $3, $4, $5) \
                  ON CONFLICT (device_id, channel_id, hour) DO UPDATE SET \
                      count = s.count + EXCLUDED.count, \
                      min = least(s.min, EXCLUDED.min), \
                      max = greatest(s.max, EXCLUDED.max), \
                      sum = s.sum + EXCLUDED.sum, \
                      sum_sq = s.sum_sq + EXCLUDED.sum_sq, \
                      updated_at = now()";
    // Batch 1: 1, 3, 5. Batch 2 (late): -2, 4.
    for (count, min, max, sum, sum_sq) in [(3_i64, 1.0, 5.0, 9.0, 35.0), (2, -2.0, 4.0, 2.0, 20.0)]
    {
        sqlx::query(upsert)
            .bind(count)
            .bind(min)
            .bind(max)
            .bind(sum)
            .bind(sum_sq)
            .execute(&mut *conn)
            .await
            .expect("upsert a batch");
    }
    let merged: (DateTime<Utc>, i64, f64, f64, f64, f64) =
        sqlx::query_as("SELECT hour, count, min, max, sum, sum_sq FROM device_stats_hourly")
            .fetch_one(&mut *conn)
            .await
            .expect("read merged row");
    assert_eq!(
        merged,
        (utc("2026-11-30T10:00:00Z"), 5, -2.0, 5.0, 11.0, 55.0)
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn ids_must_be_topic_safe(pool: PgPool) {
    let insert = |device: String| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO devices (device_id, name, kind, site, line) \
                 VALUES ($1, 'test device', 'furnace', 'plant1', 'line-a')",
            )
            .bind(device)
            .execute(&pool)
            .await
        }
    };
    let bad = [
        "plant/furnace".to_owned(),
        "furnace+".to_owned(),
        "furnace#1".to_owned(),
        "furnace 01".to_owned(),
        "$SYS".to_owned(),
        String::new(),
        "a".repeat(25),
    ];
    for device in bad {
        assert_check_violation(insert(device).await, "devices_device_id_format");
    }
    insert("A.z_0-9".to_owned())
        .await
        .expect("every allowed character class");
    insert("b".repeat(24))
        .await
        .expect("24 characters is the limit, inclusive");

    assert_check_violation(
        sqlx::query(
            "INSERT INTO devices (device_id, name, kind, site, line) \
             VALUES ('ok-device', 'x', 'furnace', 'plant1', 'line/a')",
        )
        .execute(&pool)
        .await,
        "devices_line_format",
    );
    assert_check_violation(
        sqlx::query(
            "INSERT INTO device_channels (device_id, channel_id, name, unit, sample_period_ms, \
                 range_min, range_max) \
             VALUES ('furnace-01', 9, 'temp+', '°C', 1000, 0, 100)",
        )
        .execute(&pool)
        .await,
        "device_channels_name_format",
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn thresholds_must_be_in_order(pool: PgPool) {
    let insert =
        |range: (f64, f64), warn: (Option<f64>, Option<f64>), crit: (Option<f64>, Option<f64>)| {
            let pool = pool.clone();
            async move {
                sqlx::query(
                    "INSERT INTO device_channels (device_id, channel_id, name, unit, \
                     sample_period_ms, range_min, range_max, warn_low, warn_high, \
                     crit_low, crit_high) \
                 VALUES ('furnace-01', 9, 'test', 'u', 1000, $1, $2, $3, $4, $5, $6)",
                )
                .bind(range.0)
                .bind(range.1)
                .bind(warn.0)
                .bind(warn.1)
                .bind(crit.0)
                .bind(crit.1)
                .execute(&pool)
                .await
            }
        };
    let order = "device_channels_threshold_order";
    let wrong = [
        // warn_low above warn_high
        ((0.0, 100.0), (Some(60.0), Some(40.0)), (None, None)),
        // crit_low above warn_low
        ((0.0, 100.0), (Some(40.0), Some(60.0)), (Some(45.0), None)),
        // warn_high above crit_high
        ((0.0, 100.0), (Some(40.0), Some(60.0)), (None, Some(55.0))),
        // with no warn band, crit_low must still be below crit_high
        ((0.0, 100.0), (None, None), (Some(70.0), Some(30.0))),
        // with warn_low missing, crit_low must still be below warn_high
        ((0.0, 100.0), (None, Some(50.0)), (Some(50.0), None)),
        // warn_low == warn_high leaves no normal band
        ((0.0, 100.0), (Some(50.0), Some(50.0)), (None, None)),
    ];
    for (range, warn, crit) in wrong {
        assert_check_violation(insert(range, warn, crit).await, order);
    }
    assert_check_violation(
        insert((100.0, 0.0), (None, None), (None, None)).await,
        "device_channels_range_order",
    );
    assert_check_violation(
        insert((0.0, 100.0), (Some(f64::NAN), None), (None, None)).await,
        "device_channels_no_nan",
    );
    let negative_hysteresis =
        sqlx::query("UPDATE device_channels SET hysteresis = -1 WHERE device_id = 'furnace-01'")
            .execute(&pool)
            .await;
    assert_check_violation(
        negative_hysteresis,
        "device_channels_hysteresis_non_negative",
    );

    // Equal warn and crit limits are allowed (crit_low <= warn_low, warn_high <= crit_high),
    // as is a channel with high thresholds only.
    insert(
        (0.0, 100.0),
        (Some(40.0), Some(60.0)),
        (Some(40.0), Some(60.0)),
    )
    .await
    .expect("crit equal to warn");
    sqlx::query("DELETE FROM device_channels WHERE device_id = 'furnace-01' AND channel_id = 9")
        .execute(&pool)
        .await
        .expect("delete test channel");
    insert((0.0, 100.0), (None, Some(60.0)), (None, Some(80.0)))
        .await
        .expect("high thresholds only");
}
