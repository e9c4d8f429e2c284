//! `iotctl gateways add|list|rotate|disable|enable|assign`: the gateway registry, which
//! the bridge's embedded broker authenticates every connection against. A gateway's
//! secret is made here and shown once (or written to a file only its owner can read);
//! the registry keeps its hash alone.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use gateways::{registry, Secret};
use serde::Serialize;

use crate::global::{self, Global, Outcome};
use crate::output::{self, emit, emit_json, emit_table};
use crate::services;

#[derive(Debug, Subcommand)]
pub enum GatewaysCommand {
    /// Register a gateway and print its new secret, once.
    Add {
        /// The gateway's id: its MQTT user name (and client id).
        #[arg(value_parser = global::gateway_id)]
        id: String,
        /// A device it may speak for (repeat for several).
        #[arg(long = "device", value_name = "ID", value_parser = global::device_id)]
        devices: Vec<String>,
        #[command(flatten)]
        delivery: SecretDelivery,
    },
    /// The gateways, their state and devices.
    List,
    /// Give a gateway a new secret; the old one is refused from its next connection.
    Rotate {
        #[arg(value_parser = global::gateway_id)]
        id: String,
        #[command(flatten)]
        delivery: SecretDelivery,
    },
    /// Refuse a gateway's connections from its next connection on.
    Disable {
        #[arg(value_parser = global::gateway_id)]
        id: String,
    },
    /// Accept a disabled gateway again.
    Enable {
        #[arg(value_parser = global::gateway_id)]
        id: String,
    },
    /// Let a gateway speak for devices, taking them from whichever gateway had them.
    Assign {
        #[arg(value_parser = global::gateway_id)]
        id: String,
        /// A device (repeat for several).
        #[arg(long = "device", value_name = "ID", value_parser = global::device_id, required = true)]
        devices: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SecretDelivery {
    /// Write the secret to this file (mode 0600, replaced if it exists) instead of
    /// printing it: the gateway's `mqtt.password_file`.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
}

pub async fn run(global: &Global, command: &GatewaysCommand) -> Result<Outcome> {
    let pool = services::postgres(global).await?;
    let outcome = match command {
        GatewaysCommand::Add {
            id,
            devices,
            delivery,
        } => {
            let secret = registry::add(&pool, SERVICE, id, devices).await?;
            hand_over(global, id, "added", &secret, delivery)
        }
        GatewaysCommand::List => list(global, &pool).await,
        GatewaysCommand::Rotate { id, delivery } => {
            let secret = registry::rotate(&pool, SERVICE, id).await?;
            hand_over(global, id, "rotated", &secret, delivery)
        }
        GatewaysCommand::Disable { id } => switch(global, &pool, id, false).await,
        GatewaysCommand::Enable { id } => switch(global, &pool, id, true).await,
        GatewaysCommand::Assign { id, devices } => {
            let moved = registry::assign(&pool, SERVICE, id, devices).await?;
            if global.json {
                let moved: Vec<Moved> = moved
                    .into_iter()
                    .map(|(device, from)| Moved { device, from })
                    .collect();
                emit_json(
                    &serde_json::json!({ "gateway": id, "devices": devices, "moved": moved }),
                );
            } else {
                emit(&format!("gateway {id} speaks for {}", devices.join(", ")));
                for (device, from) in moved {
                    emit(&format!("  {device} moved from gateway {from}"));
                }
            }
            Ok(Outcome::Done)
        }
    };
    pool.close().await;
    outcome
}

const SERVICE: &str = "iotctl";

#[derive(Serialize)]
struct Moved {
    device: String,
    from: String,
}

fn hand_over(
    global: &Global,
    id: &str,
    what: &str,
    secret: &Secret,
    delivery: &SecretDelivery,
) -> Result<Outcome> {
    match &delivery.secret_file {
        Some(path) => {
            write_secret(path, secret)?;
            if global.json {
                emit_json(&serde_json::json!({ "gateway": id, what: true, "secret_file": path }));
            } else {
                emit(&format!(
                    "gateway {id} {what}; its secret is in {} (mode 0600)",
                    path.display()
                ));
            }
        }
        None if global.json => {
            emit_json(&serde_json::json!({ "gateway": id, what: true, "secret": secret.expose() }))
        }
        None => {
            emit(&format!(
                "gateway {id} {what}. Its secret, shown this once (put it in the gateway's \
                 mqtt.password_file, mode 0600):"
            ));
            emit(secret.expose());
        }
    }
    Ok(Outcome::Done)
}

/// Writes the secret so that only its owner can read it, whatever the file was before.
fn write_secret(path: &Path, secret: &Secret) -> Result<()> {
    let context = || format!("writing the secret to {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(context)?;
    // `mode` applies to a new file only; an existing one is narrowed before the write.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(context)?;
    writeln!(file, "{}", secret.expose()).with_context(context)?;
    file.sync_all().with_context(context)
}

async fn switch(global: &Global, pool: &sqlx::PgPool, id: &str, enabled: bool) -> Result<Outcome> {
    registry::set_enabled(pool, SERVICE, id, enabled).await?;
    if global.json {
        emit_json(&serde_json::json!({ "gateway": id, "enabled": enabled }));
    } else if enabled {
        emit(&format!("gateway {id} enabled"));
    } else {
        emit(&format!(
            "gateway {id} disabled: the broker refuses it from its next connection"
        ));
    }
    Ok(Outcome::Done)
}

async fn list(global: &Global, pool: &sqlx::PgPool) -> Result<Outcome> {
    let gateways = registry::list(pool).await?;
    if global.json {
        emit_json(&gateways);
        return Ok(Outcome::Done);
    }
    let mut table = output::table(
        &["gateway", "state", "devices", "created", "secret from"],
        &[],
    );
    for gateway in &gateways {
        table.add_row(vec![
            gateway.id.clone(),
            match (gateway.enabled, gateway.seals) {
                (false, _) => "disabled",
                (true, true) => "enabled",
                (true, false) => "enabled, no frame key (rotate it)",
            }
            .to_owned(),
            gateway.devices.join(", "),
            output::time(&gateway.created_at),
            output::time(&gateway.rotated_at),
        ]);
    }
    emit_table(
        &table,
        "no gateways (`iotctl gateways add ID --device D` registers one)",
    );
    Ok(Outcome::Done)
}
