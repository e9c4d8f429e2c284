//! `iotctl health`: the seed system's health-check scripts, for real. Every service is
//! asked directly (nothing is inferred from another service's view of it), each check
//! says what it found and, when it fails, how to fix it; then a probe times readings
//! through the whole pipeline. Independent checks run at once, so a dead service costs
//! one timeout, not one per check.
//!
//! Each service's checks live in a submodule of their own; this module runs them and
//! prints the report.

mod endpoints;
mod kafka;
mod postgres;
mod probe;
mod redis_server;
mod security;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::global::{Global, Outcome};
use crate::output::{emit, emit_json};
use endpoints::{mqtt_check, readiness, BRIDGE_FIX, CONSOLE_FIX, INGESTER_FIX};
use kafka::kafka_checks;
use postgres::postgres_checks;
use redis_server::{parse_memory, redis_checks};
use security::{anonymous_check, links_check};

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Skip the end-to-end performance probe.
    #[arg(long)]
    pub no_probe: bool,

    /// Readings the probe sends through the pipeline (in frames of 50).
    #[arg(long, default_value_t = 5000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub probe_readings: u32,

    /// How long the probe waits for its readings to reach PostgreSQL.
    #[arg(long, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub probe_timeout: u64,

    /// Redis `maxmemory` the deployment is configured with.
    #[arg(long, default_value = "512mb", value_name = "SIZE", value_parser = parse_memory)]
    pub redis_maxmemory: u64,

    /// Redis `maxmemory-policy` the deployment is configured with.
    #[arg(long, default_value = "allkeys-lru", value_name = "POLICY")]
    pub redis_policy: String,
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    /// Passed, but worth knowing (a security exposure a deployment may choose).
    pub warn: bool,
    pub detail: String,
    /// What to do about a failure or a warning.
    pub fix: Option<String>,
    /// The probe's figures, for machines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurements: Option<probe::Measurements>,
}

impl Check {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            ok: true,
            warn: false,
            detail: detail.into(),
            fix: None,
            measurements: None,
        }
    }

    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            warn: true,
            fix: Some(fix.into()),
            ..Self::ok(check, detail)
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            ok: false,
            warn: false,
            detail: detail.into(),
            fix: Some(fix.into()),
            measurements: None,
        }
    }

    /// A check that could not run because one it depends on failed.
    fn blocked(check: &'static str, by: &str) -> Self {
        Self::fail(
            check,
            format!("not checked: {by} failed"),
            format!("fix the {by} check first"),
        )
    }
}

pub async fn run(global: &Global, args: &HealthArgs) -> Result<Outcome> {
    let ((mut checks, pool), redis, kafka, mqtt, anonymous, bridge, ingester, console) = tokio::join!(
        postgres_checks(global),
        redis_checks(global, args),
        kafka_checks(global),
        mqtt_check(global),
        anonymous_check(global),
        readiness("bridge", &global.bridge_metrics, BRIDGE_FIX),
        readiness("ingester", &global.ingester_metrics, INGESTER_FIX),
        readiness("console", &global.console_url, CONSOLE_FIX),
    );
    checks.extend(redis);
    checks.extend(kafka);
    checks.extend([
        mqtt,
        anonymous,
        links_check(global),
        bridge,
        ingester,
        console,
    ]);
    if !args.no_probe {
        checks.push(match &pool {
            Some(pool) => probe::run(global, args, pool).await,
            None => Check::blocked("probe", "postgresql"),
        });
    }
    if let Some(pool) = pool {
        pool.close().await;
    }

    if global.json {
        emit_json(&checks);
    } else {
        for check in &checks {
            let verdict = match (check.ok, check.warn) {
                (false, _) => "FAIL",
                (true, true) => "WARN",
                (true, false) => "ok",
            };
            emit(&format!("{verdict} {}: {}", check.check, check.detail));
            if let Some(fix) = &check.fix {
                emit(&format!("     fix: {fix}"));
            }
        }
    }
    Ok(if checks.iter().all(|c| c.ok) {
        Outcome::Done
    } else {
        Outcome::Failed
    })
}
