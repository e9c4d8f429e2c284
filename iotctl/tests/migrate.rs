//! `iotctl migrate`: the owner brings an empty database to this build's schema, once; a
//! service's login is refused with a sentence saying who may.

mod support;

use sqlx::PgPool;
use support::{database_url, json, run, stderr};

#[sqlx::test(migrations = false)]
async fn the_owner_migrates_once_and_a_services_login_is_refused(pool: PgPool) {
    let first = run(&pool, &["--json", "migrate"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let migrated = json(&first);
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(migrated["applied_now"], migrations, "{migrated}");
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(devices > 0, "the seed devices are in");

    let again = run(&pool, &["--json", "migrate"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(json(&again)["applied_now"], 0);

    // The stack's ingester login, on this database: may not change the schema.
    let login = std::env::var("DATABASE_URL_INGESTER")
        .expect("DATABASE_URL_INGESTER: run scripts/stack.sh up and load .stack/env");
    let database = database_url(&pool);
    let (_, name) = database.rsplit_once('/').unwrap();
    let (server, _) = login.rsplit_once('/').unwrap();
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let refused = run(
        &pool,
        &["--database-url", &format!("{server}/{name}"), "migrate"],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("as the schema's owner"),
        "{}",
        stderr(&refused)
    );
}
