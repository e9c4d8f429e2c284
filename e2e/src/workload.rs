//! The known, countable workload: the five seed machines of `simulated-plant.toml`,
//! split over two gateways, every channel sampled every 10 ms (about 800 readings/s in
//! all) so a short scenario still moves tens of thousands of readings. The devices and
//! channels are the seed catalog's, so the ingester stores them rather than
//! dead-lettering them; the values come from the agent's own simulator, seeded by the
//! scenario's seed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use toml::{Table, Value};

const SIMULATED_PLANT: &str = include_str!("../../edge-agent/config/simulated-plant.toml");

/// Sample period of every channel.
pub const PERIOD: &str = "10ms";
/// Readings per frame. Every device samples at least 100 readings/s, so a frame fills in
/// at most 0.5 s, well before `MAX_AGE`: every frame but the last of a boot is full,
/// which is what lets a scenario turn dropped frames into dropped readings.
pub const FRAME_READINGS: u64 = 50;
const MAX_AGE: &str = "2s";

/// One gateway (one agent process) and the seed devices it simulates.
pub struct Gateway {
    pub id: &'static str,
    pub devices: &'static [&'static str],
}

pub const GATEWAYS: [Gateway; 2] = [
    Gateway {
        id: "e2e-gateway-a",
        devices: &["furnace-01", "cnc-spindle-01", "press-01"],
    },
    Gateway {
        id: "e2e-gateway-b",
        devices: &["paint-booth-01", "compressor-01"],
    },
];

/// Every device of the workload.
pub fn devices() -> Vec<&'static str> {
    GATEWAYS
        .iter()
        .flat_map(|g| g.devices.iter().copied())
        .collect()
}

/// The agents' in-flight window when their queue is capped (see [`agent_config`]).
pub const QUEUE_CAP_INFLIGHT: u16 = 1;

/// How an agent's disk queue is sized.
#[derive(Debug, Clone, Copy)]
pub struct QueueSize {
    pub segment_bytes: u64,
    pub max_bytes: u64,
}

/// Writes the configuration of `gateway` into `dir` and returns its path.
pub fn agent_config(
    gateway: &Gateway,
    seed: u64,
    mqtt_port: u16,
    queue: Option<QueueSize>,
    dir: &Path,
) -> Result<PathBuf> {
    let mut config: Table = SIMULATED_PLANT
        .parse()
        .context("parsing edge-agent/config/simulated-plant.toml")?;
    set(&mut config, &["gateway", "id"], gateway.id.into())?;
    set(&mut config, &["mqtt", "port"], i64::from(mqtt_port).into())?;
    set(&mut config, &["mqtt", "host"], "127.0.0.1".into())?;
    let queue_dir = dir.join(format!("{}-queue", gateway.id));
    set(
        &mut config,
        &["queue", "dir"],
        queue_dir.display().to_string().into(),
    )?;
    if let Some(size) = queue {
        set(
            &mut config,
            &["queue", "segment_bytes"],
            format!("{} B", size.segment_bytes).into(),
        )?;
        set(
            &mut config,
            &["queue", "max_bytes"],
            format!("{} B", size.max_bytes).into(),
        )?;
        // One frame in flight: a frame the broker took just before it stopped, whose
        // PUBACK the outage swallowed, is later dropped at the cap yet stored. One window
        // per gateway bounds how many such frames the ledger has to allow.
        set(
            &mut config,
            &["mqtt", "inflight"],
            Value::Integer(i64::from(QUEUE_CAP_INFLIGHT)),
        )?;
    }
    set(
        &mut config,
        &["batch", "max_readings"],
        Value::Integer(FRAME_READINGS as i64),
    )?;
    set(&mut config, &["batch", "max_age"], MAX_AGE.into())?;
    set(&mut config, &["health", "interval"], "1s".into())?;
    // Recovery times then measure the pipeline, not the agent's backoff (30 s at most
    // by default, a setting for a plant's network).
    set(&mut config, &["mqtt", "reconnect_max"], "2s".into())?;

    let Some(Value::Array(all)) = config.remove("devices") else {
        bail!("simulated-plant.toml has no [[devices]]");
    };
    let mut devices = Vec::new();
    for (index, mut device) in all.into_iter().enumerate() {
        let Some(table) = device.as_table_mut() else {
            bail!("devices[{index}] is not a table");
        };
        let id = table.get("id").and_then(Value::as_str).unwrap_or_default();
        if !gateway.devices.contains(&id) {
            continue;
        }
        // Distinct per device and per scenario seed, within TOML's i64.
        let device_seed = (seed.rotate_left(index as u32 * 7) ^ index as u64) >> 1;
        table.insert("seed".into(), Value::Integer(device_seed as i64));
        let Some(Value::Array(channels)) = table.get_mut("channels") else {
            bail!("devices[{index}] has no channels");
        };
        for channel in channels.iter_mut().filter_map(Value::as_table_mut) {
            channel.insert("period".into(), PERIOD.into());
            // Simulated dropouts and stuck values are the alert tests' business; here
            // every sample should become a reading.
            channel.remove("anomalies");
        }
        devices.push(device);
    }
    if devices.len() != gateway.devices.len() {
        bail!("simulated-plant.toml lacks some of {:?}", gateway.devices);
    }
    config.insert("devices".into(), Value::Array(devices));

    let path = dir.join(format!("{}.toml", gateway.id));
    std::fs::write(
        &path,
        toml::to_string(&config).context("encoding the agent config")?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn set(table: &mut Table, path: &[&str], value: Value) -> Result<()> {
    let (last, parents) = path.split_last().context("empty key path")?;
    let mut table = table;
    for key in parents {
        table = table
            .entry(key.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .with_context(|| format!("{key} is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_config_is_accepted_by_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let agent = crate::binaries::binary("edge-agent").unwrap();
        for gateway in &GATEWAYS {
            let queue = Some(QueueSize {
                segment_bytes: 4096,
                max_bytes: 16384,
            });
            let path = agent_config(gateway, 42, 1883, queue, dir.path()).unwrap();
            let out = std::process::Command::new(&agent)
                .arg("--config")
                .arg(&path)
                .arg("--check-config")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: {stdout}{}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let devices = format!("publishing {} devices", gateway.devices.len());
            assert!(stdout.contains(&devices), "{stdout}");
        }
    }
}
