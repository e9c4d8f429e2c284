//! The schema's readings (see tests/schema.rs): deduplication of replayed readings, day
//! partitions and their maintenance functions, retention and hourly statistics.
//!
//! Each `#[sqlx::test]` gets a fresh database, created from `DATABASE_URL` (a role that
//! may create databases) with every migration applied, so the tests are independent and
//! "the migrations apply to an empty database" is checked by all of them.

mod support;

use std::collections::BTreeSet;

use sqlx::postgres::PgPool;
use sqlx::types::chrono::{DateTime, Utc};
use support::schema::{
    assert_check_violation, count_readings, day, insert_reading, partition_names, partitions_of,
    sqlstate, utc,
};

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
