//! The `embedded-sealed` scenario's gateway registry: a private PostgreSQL with the
//! schema, the workload's devices, and one gateway per publisher connection speaking for
//! the devices that publish over it. The bridge authenticates the publishers against it
//! and checks every frame's seal, as a plant with the registry runs.

use anyhow::Context;
use protocol::FrameKey;

use crate::database::PrivateDatabase;

use super::workload::Workload;

/// One publisher connection's identity.
pub(super) struct Gateway {
    pub(super) id: String,
    pub(super) secret: String,
    pub(super) key: FrameKey,
}

/// The registry's server (stopped when dropped), its URL and the gateways, by connection.
pub(super) struct Registry {
    _postgres: testkit::Postgres,
    pub(super) url: String,
    pub(super) gateways: Vec<Gateway>,
}

impl Registry {
    pub(super) async fn start(workload: &Workload) -> anyhow::Result<Self> {
        let PrivateDatabase {
            server: postgres,
            url,
            pool,
        } = PrivateDatabase::start(2).await?;
        let mut devices: Vec<Vec<String>> = vec![Vec::new(); workload.connections];
        for (index, device) in workload.devices().iter().enumerate() {
            devices[index % workload.connections].push(device.id.as_str().to_owned());
        }
        // The warm-up frames go out as the first connection's gateway.
        devices[0].push(workload.warm_up.id.as_str().to_owned());
        let all: Vec<String> = devices.iter().flatten().cloned().collect();
        sqlx::query(
            "INSERT INTO devices (device_id, name, kind, site, line)
             SELECT d, d, 'bench', 'bench', 'bench' FROM unnest($1::text[]) AS d",
        )
        .bind(&all)
        .execute(&pool)
        .await
        .context("registering the bench devices")?;
        let mut gateways = Vec::new();
        for (c, devices) in devices.iter().enumerate() {
            let id = format!("bench-gw-{c}");
            let secret = gateways::registry::add(&pool, "bench", &id, devices)
                .await
                .with_context(|| format!("registering gateway {id}"))?;
            gateways.push(Gateway {
                id,
                key: secret.frame_key(),
                secret: secret.expose().to_owned(),
            });
        }
        pool.close().await;
        Ok(Self {
            _postgres: postgres,
            url,
            gateways,
        })
    }
}
