//! `iotctl migrate`: brings the schema to this build's version. The services run as
//! logins of least-privilege roles (migrations/*_roles.sql) that cannot change the
//! schema, so a deployment runs this once per upgrade, as the schema's owner (compose's
//! gateways-init does, before the ingester starts).

use anyhow::{Context, Result};
use serde::Serialize;

use crate::global::{Global, Outcome};
use crate::output::emit_json;
use crate::services;

/// The migrations this build embeds: the schema the services of the same revision
/// expect.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, Serialize)]
struct Migrated {
    /// The newest migration's version, now applied.
    version: i64,
    /// How many were applied by this run.
    applied_now: i64,
}

pub async fn run(global: &Global) -> Result<Outcome> {
    let pool = services::postgres(global).await?;
    let applied = || async {
        // Absent before the first migration.
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    let before = applied().await;
    MIGRATOR.run(&pool).await.context(
        "applying the migrations (as the schema's owner: a login of telemetry_ingester, \
         telemetry_operator or telemetry_bridge cannot)",
    )?;
    let migrated = Migrated {
        version: MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
        applied_now: applied().await - before,
    };
    if global.json {
        emit_json(&migrated);
    } else {
        println!(
            "schema at version {}: {} migration(s) applied now",
            migrated.version, migrated.applied_now
        );
    }
    Ok(Outcome::Done)
}
