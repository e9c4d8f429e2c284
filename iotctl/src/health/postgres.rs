//! The PostgreSQL checks of `iotctl health`: the server answers, the schema is at the
//! migration this build embeds, and the seed devices the simulator and dashboards rely on
//! are there. The pool they open is handed on to the probe.

use std::collections::HashMap;

use sqlx::PgPool;

use super::Check;
use crate::global::Global;
use crate::migrate::MIGRATOR;
use crate::output;
use crate::services;

/// PostgreSQL, then (on the same pool) the schema and the seed devices. The pool is
/// handed on to the probe.
pub(super) async fn postgres_checks(global: &Global) -> (Vec<Check>, Option<PgPool>) {
    let pool = match services::postgres(global).await {
        Ok(pool) => pool,
        Err(e) => {
            let fix = if global.database_url.is_none() {
                "pass --database-url or set DATABASE_URL"
            } else {
                "start PostgreSQL (local stack: `scripts/stack.sh up`) or correct \
                 --database-url / DATABASE_URL"
            };
            return (
                vec![
                    Check::fail("postgresql", output::error_text(&e), fix),
                    Check::blocked("schema", "postgresql"),
                    Check::blocked("seed-devices", "postgresql"),
                ],
                None,
            );
        }
    };
    let options = pool.connect_options();
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let version: Result<String, _> = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await;
    let reachable = match version {
        Ok(version) => Check::ok("postgresql", format!("PostgreSQL {version} at {target}")),
        Err(e) => Check::fail(
            "postgresql",
            format!("connected to {target}, but a query failed: {e}"),
            "check the role's rights on the database",
        ),
    };
    let checks = vec![
        reachable,
        schema_check(&pool).await,
        seed_check(&pool).await,
    ];
    (checks, Some(pool))
}

const MIGRATE_FIX: &str = "apply the migrations as the schema's owner: `iotctl migrate`";

async fn schema_check(pool: &PgPool) -> Check {
    let expected: Vec<&sqlx::migrate::Migration> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .collect();
    let Some(latest) = expected.iter().map(|m| m.version).max() else {
        return Check::ok("schema", "this build embeds no migrations");
    };
    let table: Result<Option<String>, _> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(pool)
            .await;
    match table {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Check::fail(
                "schema",
                format!("no migration has been applied (latest is {latest})"),
                MIGRATE_FIX,
            )
        }
        Err(e) => {
            return Check::fail(
                "schema",
                format!("cannot read the catalog: {e}"),
                MIGRATE_FIX,
            )
        }
    }
    let applied: Vec<(i64, bool, Vec<u8>)> =
        match sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                return Check::fail(
                    "schema",
                    format!("cannot read _sqlx_migrations: {e}"),
                    MIGRATE_FIX,
                )
            }
        };
    schema_verdict(&expected, &applied)
}

/// Compares the applied migrations (version, success, checksum) with the embedded ones.
fn schema_verdict(
    expected: &[&sqlx::migrate::Migration],
    applied: &[(i64, bool, Vec<u8>)],
) -> Check {
    let latest = expected.iter().map(|m| m.version).max().unwrap_or_default();
    let applied_by_version: HashMap<i64, (bool, &[u8])> = applied
        .iter()
        .map(|(v, ok, sum)| (*v, (*ok, sum.as_slice())))
        .collect();
    let mut failed: Vec<i64> = applied.iter().filter(|r| !r.1).map(|r| r.0).collect();
    failed.sort_unstable();
    if let Some(version) = failed.first() {
        return Check::fail(
            "schema",
            format!("migration {version} failed part-way; the schema is in an unknown state"),
            format!(
                "repair the schema by hand, delete version {version} from _sqlx_migrations, \
                 then migrate again"
            ),
        );
    }
    let mut unknown: Vec<i64> = applied
        .iter()
        .map(|r| r.0)
        .filter(|v| !expected.iter().any(|m| m.version == *v))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        return Check::fail(
            "schema",
            format!(
                "the database has migrations this iotctl does not know ({}): the schema is \
                 newer than this build",
                join(&unknown)
            ),
            "use an iotctl built from the same revision as the services",
        );
    }
    let changed: Vec<i64> = expected
        .iter()
        .filter(|m| {
            applied_by_version
                .get(&m.version)
                .is_some_and(|(_, sum)| *sum != m.checksum.as_ref())
        })
        .map(|m| m.version)
        .collect();
    if !changed.is_empty() {
        return Check::fail(
            "schema",
            format!(
                "migration {} differs from the one applied to this database",
                join(&changed)
            ),
            "an applied migration file was edited: restore it from version control \
             (schema changes go in a new migration)",
        );
    }
    let pending: Vec<i64> = expected
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied_by_version.contains_key(v))
        .collect();
    if !pending.is_empty() {
        let current = applied.iter().map(|r| r.0).max();
        return Check::fail(
            "schema",
            format!(
                "at {}, latest is {latest}: {} pending ({})",
                current.map_or_else(|| "no version".to_owned(), |v| format!("version {v}")),
                pending.len(),
                join(&pending)
            ),
            MIGRATE_FIX,
        );
    }
    let description = expected
        .iter()
        .find(|m| m.version == latest)
        .map(|m| m.description.to_string())
        .unwrap_or_default();
    Check::ok(
        "schema",
        format!(
            "at the latest migration, {latest} ({description}); {} applied",
            expected.len()
        ),
    )
}

fn join(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The five machines of the seed system and their channels (migration
/// `…02_seed_devices.sql`), which the simulator and the dashboards rely on.
const SEED: [(&str, &[(i16, &str)]); 5] = [
    ("furnace-01", &[(0, "temperature")]),
    (
        "cnc-spindle-01",
        &[(0, "vibration_rms"), (1, "bearing_temp")],
    ),
    ("press-01", &[(0, "pressure")]),
    ("paint-booth-01", &[(0, "humidity"), (1, "temperature")]),
    ("compressor-01", &[(0, "active_power"), (1, "line_current")]),
];

/// (device, channel, channel name) of a seed device; no channel when it has none.
type SeedRow = (String, Option<i16>, Option<String>);

async fn seed_check(pool: &PgPool) -> Check {
    let ids: Vec<&str> = SEED.iter().map(|(id, _)| *id).collect();
    let rows: Result<Vec<SeedRow>, _> = sqlx::query_as(
        "SELECT d.device_id, c.channel_id, c.name \
           FROM devices d LEFT JOIN device_channels c USING (device_id) \
          WHERE d.device_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            return Check::fail(
                "seed-devices",
                format!("cannot read devices: {e}"),
                MIGRATE_FIX,
            )
        }
    };
    seed_verdict(&rows)
}

fn seed_verdict(rows: &[SeedRow]) -> Check {
    let mut problems = Vec::new();
    for (device, channels) in SEED {
        let found: Vec<(i16, &str)> = rows
            .iter()
            .filter(|(d, _, _)| d == device)
            .filter_map(|(_, c, n)| Some((((*c)?), n.as_deref()?)))
            .collect();
        if !rows.iter().any(|(d, _, _)| d == device) {
            problems.push(format!("device {device} is missing"));
            continue;
        }
        for (channel, name) in channels {
            match found.iter().find(|(c, _)| c == channel) {
                None => problems.push(format!("{device} has no channel {channel} ({name})")),
                Some((_, actual)) if actual != name => problems.push(format!(
                    "{device} channel {channel} is named {actual}, expected {name}"
                )),
                Some(_) => {}
            }
        }
    }
    if problems.is_empty() {
        let channels: usize = SEED.iter().map(|(_, c)| c.len()).sum();
        Check::ok(
            "seed-devices",
            format!(
                "all {} seed devices and their {channels} channels present",
                SEED.len()
            ),
        )
    } else {
        Check::fail(
            "seed-devices",
            problems.join("; "),
            "the seed migration (20261130000002_seed_devices.sql) creates them: restore the \
             rows from it, or migrate a fresh database",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_devices() {
        let mut rows: Vec<SeedRow> = SEED
            .iter()
            .flat_map(|(d, channels)| {
                channels
                    .iter()
                    .map(move |(c, n)| (d.to_string(), Some(*c), Some(n.to_string())))
            })
            .collect();
        assert!(seed_verdict(&rows).ok);
        rows.retain(|(d, c, _)| d != "press-01" && !(d == "compressor-01" && *c == Some(1)));
        let verdict = seed_verdict(&rows);
        assert!(!verdict.ok);
        assert!(verdict.detail.contains("device press-01 is missing"));
        assert!(verdict
            .detail
            .contains("compressor-01 has no channel 1 (line_current)"));
    }

    #[test]
    fn schema_versions() {
        let expected: Vec<&sqlx::migrate::Migration> = MIGRATOR.iter().collect();
        let applied: Vec<(i64, bool, Vec<u8>)> = expected
            .iter()
            .map(|m| (m.version, true, m.checksum.to_vec()))
            .collect();
        assert!(schema_verdict(&expected, &applied).ok);

        let behind = &applied[..applied.len() - 1];
        let verdict = schema_verdict(&expected, behind);
        assert!(
            !verdict.ok && verdict.detail.contains("1 pending"),
            "{verdict:?}"
        );

        let mut dirty = applied.clone();
        dirty[1].1 = false;
        assert!(schema_verdict(&expected, &dirty)
            .detail
            .contains("failed part-way"));

        let mut edited = applied.clone();
        edited[0].2 = vec![0; 48];
        assert!(schema_verdict(&expected, &edited)
            .detail
            .contains("differs"));

        let mut newer = applied.clone();
        newer.push((99_990_101_000_000, true, vec![]));
        assert!(schema_verdict(&expected, &newer)
            .detail
            .contains("does not know"));
    }
}
