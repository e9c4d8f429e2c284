//! The registry's tables (`gateways`, `gateway_devices`, migration
//! `20261205000011_gateways.sql`) and every change to them. Each change is one
//! transaction with its line in `system_events`, the operation log, as alert changes are.

use chrono::{DateTime, Utc};
use protocol::id::{validate_id, IdError};
use protocol::FrameKey;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use crate::secret::{Secret, SecretHash};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("gateway id {id:?} {problem}")]
    InvalidId { id: String, problem: IdError },
    #[error("gateway {0:?} exists already (a new secret: `iotctl gateways rotate {0}`)")]
    Exists(String),
    #[error("there is no gateway {0:?} (`iotctl gateways list` shows them)")]
    Unknown(String),
    #[error("no device {} is registered (`iotctl devices` lists them)", .0.join(", "))]
    UnknownDevices(Vec<String>),
    #[error("the gateway registry in PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
}

/// A gateway as `iotctl gateways list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Gateway {
    pub id: String,
    pub enabled: bool,
    /// Whether it has a frame key, so its sealed frames can be checked (a gateway
    /// registered before frame keys existed gets one when rotated).
    pub seals: bool,
    pub devices: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub rotated_at: DateTime<Utc>,
}

/// What the broker needs to decide about a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub hash: SecretHash,
    pub enabled: bool,
}

/// Registers a gateway for `devices` and returns its secret, which exists nowhere else.
pub async fn add(
    pool: &PgPool,
    service: &str,
    id: &str,
    devices: &[String],
) -> Result<Secret, RegistryError> {
    check_id(id)?;
    let secret = Secret::generate();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO gateways (gateway_id, secret_hash, frame_key) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(secret.hash().as_str())
    .bind(secret.frame_key().as_bytes().as_slice())
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(RegistryError::Exists(id.to_owned()));
    }
    let moved = assign_in(&mut tx, id, devices).await?;
    log(
        &mut tx,
        service,
        "gateway_added",
        &format!("gateway {id} added for {} device(s)", devices.len()),
        serde_json::json!({ "gateway": id, "devices": devices, "moved_from": moved }),
    )
    .await?;
    tx.commit().await?;
    Ok(secret)
}

/// Gives a gateway a new secret; the old one stops working at its next connection.
pub async fn rotate(pool: &PgPool, service: &str, id: &str) -> Result<Secret, RegistryError> {
    let secret = Secret::generate();
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE gateways SET secret_hash = $2, previous_frame_key = frame_key, frame_key = $3,
                             rotated_at = now()
          WHERE gateway_id = $1",
    )
    .bind(id)
    .bind(secret.hash().as_str())
    .bind(secret.frame_key().as_bytes().as_slice())
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(RegistryError::Unknown(id.to_owned()));
    }
    let message = format!("gateway {id}: secret rotated");
    log(
        &mut tx,
        service,
        "gateway_rotated",
        &message,
        serde_json::json!({ "gateway": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(secret)
}

/// Enables or disables a gateway. A disabled one is refused at its next connection.
pub async fn set_enabled(
    pool: &PgPool,
    service: &str,
    id: &str,
    enabled: bool,
) -> Result<(), RegistryError> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query("UPDATE gateways SET enabled = $2 WHERE gateway_id = $1")
        .bind(id)
        .bind(enabled)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(RegistryError::Unknown(id.to_owned()));
    }
    let (kind, word) = if enabled {
        ("gateway_enabled", "enabled")
    } else {
        ("gateway_disabled", "disabled")
    };
    let message = format!("gateway {id} {word}");
    log(
        &mut tx,
        service,
        kind,
        &message,
        serde_json::json!({ "gateway": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Lets a gateway speak for `devices`, taking them from whichever gateway had them.
/// Returns the devices that moved, with their previous gateway.
pub async fn assign(
    pool: &PgPool,
    service: &str,
    id: &str,
    devices: &[String],
) -> Result<Vec<(String, String)>, RegistryError> {
    let mut tx = pool.begin().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM gateways WHERE gateway_id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        return Err(RegistryError::Unknown(id.to_owned()));
    }
    let moved = assign_in(&mut tx, id, devices).await?;
    log(
        &mut tx,
        service,
        "gateway_assigned",
        &format!("gateway {id} assigned {} device(s)", devices.len()),
        serde_json::json!({ "gateway": id, "devices": devices, "moved_from": moved }),
    )
    .await?;
    tx.commit().await?;
    Ok(moved)
}

/// Every gateway with its devices, by id.
pub async fn list(pool: &PgPool) -> Result<Vec<Gateway>, RegistryError> {
    let gateways = sqlx::query_as(
        "SELECT g.gateway_id AS id, g.enabled, g.frame_key IS NOT NULL AS seals,
                COALESCE(array_agg(d.device_id ORDER BY d.device_id)
                         FILTER (WHERE d.device_id IS NOT NULL), '{}') AS devices,
                g.created_at, g.rotated_at
           FROM gateways g LEFT JOIN gateway_devices d USING (gateway_id)
          GROUP BY g.gateway_id ORDER BY g.gateway_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(gateways)
}

/// The stored hash and state of gateway `id`, if it is registered.
pub async fn credentials(pool: &PgPool, id: &str) -> Result<Option<Credentials>, sqlx::Error> {
    let row: Option<(String, bool)> =
        sqlx::query_as("SELECT secret_hash, enabled FROM gateways WHERE gateway_id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(hash, enabled)| Credentials {
        hash: SecretHash::from_stored(hash),
        enabled,
    }))
}

/// What the bridge needs to check a frame of one device: the gateway that speaks for it
/// and the keys its frames may be sealed with.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceKeys {
    pub gateway: String,
    pub enabled: bool,
    /// `None` for a gateway registered before frame keys existed (rotate it).
    pub key: Option<FrameKey>,
    /// The key before the last rotation, and when it was replaced.
    pub previous: Option<(FrameKey, DateTime<Utc>)>,
}

type KeysRow = (
    String,
    bool,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    DateTime<Utc>,
);

/// A device and its `KeysRow`.
type DeviceKeysRow = (
    String,
    String,
    bool,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    DateTime<Utc>,
);

const KEYS_COLUMNS: &str =
    "g.gateway_id, g.enabled, g.frame_key, g.previous_frame_key, g.rotated_at
           FROM gateway_devices d JOIN gateways g USING (gateway_id)";

fn device_keys_of((gateway, enabled, key, previous, rotated_at): KeysRow) -> DeviceKeys {
    DeviceKeys {
        gateway,
        enabled,
        key: key.as_deref().and_then(frame_key),
        previous: previous
            .as_deref()
            .and_then(frame_key)
            .map(|key| (key, rotated_at)),
    }
}

/// The keys of the gateway that speaks for `device`, if one does.
pub async fn device_keys(pool: &PgPool, device: &str) -> Result<Option<DeviceKeys>, sqlx::Error> {
    let row: Option<KeysRow> =
        sqlx::query_as(&format!("SELECT {KEYS_COLUMNS} WHERE d.device_id = $1"))
            .bind(device)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(device_keys_of))
}

/// The keys of every device a gateway speaks for, in one query: how the bridge keeps
/// its cache current without a lookup per device on the forwarding path.
pub async fn all_device_keys(pool: &PgPool) -> Result<Vec<(String, DeviceKeys)>, sqlx::Error> {
    let rows: Vec<DeviceKeysRow> = sqlx::query_as(&format!("SELECT d.device_id, {KEYS_COLUMNS}"))
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(device, gateway, enabled, key, previous, rotated_at)| {
            (
                device,
                device_keys_of((gateway, enabled, key, previous, rotated_at)),
            )
        })
        .collect())
}

/// A stored key (the table's CHECK holds its length).
fn frame_key(bytes: &[u8]) -> Option<FrameKey> {
    <[u8; protocol::seal::KEY_LEN]>::try_from(bytes)
        .ok()
        .map(FrameKey::from_bytes)
}

fn check_id(id: &str) -> Result<(), RegistryError> {
    validate_id(id).map_err(|problem| RegistryError::InvalidId {
        id: id.to_owned(),
        problem,
    })
}

async fn assign_in(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    devices: &[String],
) -> Result<Vec<(String, String)>, RegistryError> {
    // One statement may not upsert a row twice: a device named twice is one device.
    let mut devices = devices.to_vec();
    devices.sort();
    devices.dedup();
    let known: Vec<String> =
        sqlx::query_scalar("SELECT device_id FROM devices WHERE device_id = ANY($1)")
            .bind(&devices)
            .fetch_all(&mut **tx)
            .await?;
    let unknown: Vec<String> = devices
        .iter()
        .filter(|d| !known.contains(d))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(RegistryError::UnknownDevices(unknown));
    }
    let moved: Vec<(String, String)> = sqlx::query_as(
        "SELECT device_id, gateway_id FROM gateway_devices
          WHERE device_id = ANY($1) AND gateway_id <> $2 ORDER BY device_id",
    )
    .bind(&devices)
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO gateway_devices (device_id, gateway_id) SELECT unnest($1::text[]), $2
         ON CONFLICT (device_id) DO UPDATE SET gateway_id = EXCLUDED.gateway_id",
    )
    .bind(&devices)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(moved)
}

async fn log(
    tx: &mut Transaction<'_, Postgres>,
    service: &str,
    kind: &str,
    message: &str,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO system_events (service, level, kind, message, details)
         VALUES ($1, 'info', $2, $3, $4::jsonb)",
    )
    .bind(service)
    .bind(kind)
    .bind(message)
    .bind(details.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
