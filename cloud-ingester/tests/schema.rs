//! Behaviour of the database schema in `migrations/`: the migrations themselves, seed
//! data and the naming and ordering rules. Readings and partitions are in
//! tests/schema_readings.rs, the alert lifecycle in tests/schema_alerts.rs.
//!
//! Each `#[sqlx::test]` gets a fresh database, created from `DATABASE_URL` (a role that
//! may create databases) with every migration applied, so the tests are independent and
//! "the migrations apply to an empty database" is checked by all of them.
//!
//! Run with `DATABASE_URL=postgres://… cargo test -p cloud-ingester --test schema`.

mod support;

use std::collections::BTreeSet;

use sqlx::postgres::PgPool;
use sqlx::types::chrono::{DateTime, Utc};
use support::schema::{assert_check_violation, partition_names, SEED_DEVICES};

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
