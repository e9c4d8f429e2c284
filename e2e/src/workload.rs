//! The known, countable workload: the five seed machines of `simulated-plant.toml`,
//! every channel sampled every 10 ms, the values from the agent's own simulator seeded
//! by the scenario's seed. At [`SEED_RATE`] (about 800 readings/s, the short mode's) it
//! is the seed channels alone, split over two gateways, so a short scenario still moves
//! tens of thousands of readings. A higher rate, up to the benchmark's [`BENCH_RATE`],
//! adds simulated channels to the same devices (registered in `device_channels` by the
//! deployment, so the ingester stores them rather than dead-lettering them) and gives
//! each device an agent of its own, as the benchmark does: an agent is single-threaded.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use sqlx::PgPool;
use toml::{Table, Value};

const SIMULATED_PLANT: &str = include_str!("../../edge-agent/config/simulated-plant.toml");

/// Sample period of every channel.
pub const PERIOD: &str = "10ms";
const PERIOD_MS: u64 = 10;
/// Readings per frame. Every device samples at least 100 readings/s, so a frame fills in
/// at most 0.5 s, well before `MAX_AGE`: every frame but the last of a boot is full,
/// which is what lets a scenario turn dropped frames into dropped readings.
pub const FRAME_READINGS: u64 = 50;
const MAX_AGE: &str = "2s";

/// The seed devices, in the order of `simulated-plant.toml`.
pub const DEVICES: [&str; 5] = [
    "furnace-01",
    "cnc-spindle-01",
    "press-01",
    "paint-booth-01",
    "compressor-01",
];

/// The seed channels' rate: their 8 channels every 10 ms. The short mode's rate.
pub const SEED_RATE: u64 = 800;
/// The benchmark's rate, the long mode's: 5 devices × 240 channels every 10 ms
/// (`bench/src/deployment.rs`, `Workload::standard`, "5 devices"), the load at which
/// the README's end-to-end bar of 100k readings/s committed is measured.
pub const BENCH_RATE: u64 = 120_000;
/// Most readings/s the benchmark gives one agent process (24 000: one device of 240
/// channels every 10 ms). Past this the seed devices get an agent each.
const AGENT_RATE: u64 = 24_000;
/// The added channels' ids start here, clear of the seed's (0 and 1). Channel ids are
/// one byte, so a device has at most 240 added channels.
const FIRST_ADDED_CHANNEL: u8 = 16;
/// The readings/s of each of today's two gateways at [`SEED_RATE`] (4 channels each): the
/// capped queue of the queue-cap scenario is sized for it and scaled from it.
const SEED_GATEWAY_RATE: u64 = 400;

/// Every device of the workload.
pub fn devices() -> Vec<&'static str> {
    DEVICES.to_vec()
}

/// One gateway (one agent process) and the seed devices it simulates.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub id: String,
    pub devices: Vec<&'static str>,
    /// Readings per second its channels are configured to make.
    pub rate: u64,
}

/// The agents' in-flight window when their queue is capped (see [`Workload::agent_config`]).
pub const QUEUE_CAP_INFLIGHT: u16 = 1;

/// How an agent's disk queue is sized, for an agent making [`SEED_GATEWAY_RATE`]
/// readings/s; a busier agent's queue is scaled up so it holds the same time.
#[derive(Debug, Clone, Copy)]
pub struct QueueSize {
    pub segment_bytes: u64,
    pub max_bytes: u64,
}

/// The workload at one rate: the seed devices, the channels added to each, and the
/// gateways that simulate them.
#[derive(Debug, Clone)]
pub struct Workload {
    seed_config: Table,
    /// Per device of [`DEVICES`]: how many channels are added to its seed channels.
    added: [u8; 5],
    gateways: Vec<Gateway>,
}

impl Workload {
    /// The workload closest to `rate` readings/s (channels come in steps of 100/s):
    /// the seed channels, plus added ones spread so every device has about as many.
    pub fn new(rate: u64) -> Result<Self> {
        let seed_config: Table = SIMULATED_PLANT
            .parse()
            .context("parsing edge-agent/config/simulated-plant.toml")?;
        let seed_channels = seed_channel_counts(&seed_config)?;
        let per_channel = 1000 / PERIOD_MS;
        let max_added = u64::from(u8::MAX - FIRST_ADDED_CHANNEL) + 1;
        let seed_total: u64 = seed_channels.iter().sum();
        let most = (seed_total + max_added * DEVICES.len() as u64) * per_channel;
        ensure!(
            (SEED_RATE..=most).contains(&rate),
            "a rate of {rate} readings/s: the workload makes {SEED_RATE} (the seed channels) \
             to {most} (channel ids are one byte)"
        );
        let mut to_add = rate.div_ceil(per_channel) - seed_total;
        let mut added = [0u8; 5];
        // One channel at a time to the device with the fewest, so the devices (and,
        // at one device each, the agents) carry about the same load.
        while to_add > 0 {
            let fewest = (0..DEVICES.len())
                .filter(|&d| u64::from(added[d]) < max_added)
                .min_by_key(|&d| seed_channels[d] + u64::from(added[d]))
                .context("no device has a channel id left")?;
            added[fewest] += 1;
            to_add -= 1;
        }
        let device_rate = |d: usize| (seed_channels[d] + u64::from(added[d])) * per_channel;
        let gateway = |id: String, indices: &[usize]| Gateway {
            id,
            devices: indices.iter().map(|&d| DEVICES[d]).collect(),
            rate: indices.iter().map(|&d| device_rate(d)).sum(),
        };
        let mut gateways = vec![
            gateway("e2e-gateway-a".to_owned(), &[0, 1, 2]),
            gateway("e2e-gateway-b".to_owned(), &[3, 4]),
        ];
        if gateways.iter().any(|g| g.rate > AGENT_RATE) {
            gateways = (0..DEVICES.len())
                .map(|d| gateway(format!("e2e-gw-{}", DEVICES[d]), &[d]))
                .collect();
        }
        Ok(Self {
            seed_config,
            added,
            gateways,
        })
    }

    /// Readings per second the agents are configured to make, all channels together.
    pub fn rate(&self) -> u64 {
        self.gateways.iter().map(|g| g.rate).sum()
    }

    /// The gateways, one agent process each.
    pub fn gateways(&self) -> &[Gateway] {
        &self.gateways
    }

    /// The channel ids added to `device` (none at [`SEED_RATE`]).
    pub fn added_channels(&self, device: &str) -> impl Iterator<Item = u8> {
        let added = DEVICES
            .iter()
            .position(|&d| d == device)
            .map_or(0, |d| self.added[d]);
        (0..added).map(|n| FIRST_ADDED_CHANNEL + n)
    }

    /// Registers the added channels in `device_channels` (the migrations seed only the
    /// seed channels), as [`added_channel`] configures them; nothing at [`SEED_RATE`].
    pub async fn register_added_channels(&self, db: &PgPool) -> Result<()> {
        let (mut devices, mut ids) = (Vec::new(), Vec::new());
        for device in DEVICES {
            for id in self.added_channels(device) {
                devices.push(device);
                ids.push(i16::from(id));
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO device_channels
                    (device_id, channel_id, name, unit, sample_period_ms, range_min, range_max)
             SELECT d, c, 'added-' || c, 'kW', $3, 0, 150
               FROM unnest($1::text[], $2::smallint[]) AS t(d, c)",
        )
        .bind(&devices)
        .bind(&ids)
        .bind(PERIOD_MS as i32)
        .execute(db)
        .await
        .context("registering the added channels in device_channels")?;
        Ok(())
    }

    /// Writes the configuration of `gateway` into `dir` and returns its path.
    pub fn agent_config(
        &self,
        gateway: &Gateway,
        seed: u64,
        mqtt_port: u16,
        queue: Option<QueueSize>,
        dir: &Path,
    ) -> Result<PathBuf> {
        let mut config = self.seed_config.clone();
        set(&mut config, &["gateway", "id"], gateway.id.as_str().into())?;
        set(&mut config, &["mqtt", "port"], i64::from(mqtt_port).into())?;
        set(&mut config, &["mqtt", "host"], "127.0.0.1".into())?;
        let queue_dir = dir.join(format!("{}-queue", gateway.id));
        set(
            &mut config,
            &["queue", "dir"],
            queue_dir.display().to_string().into(),
        )?;
        if let Some(size) = queue {
            // The same seconds of the gateway's readings as at the seed rate.
            let scale =
                |bytes: u64| bytes * gateway.rate.max(SEED_GATEWAY_RATE) / SEED_GATEWAY_RATE;
            set(
                &mut config,
                &["queue", "segment_bytes"],
                format!("{} B", scale(size.segment_bytes)).into(),
            )?;
            set(
                &mut config,
                &["queue", "max_bytes"],
                format!("{} B", scale(size.max_bytes)).into(),
            )?;
            // One frame in flight: a frame the broker took just before it stopped, whose
            // PUBACK the outage swallowed, is later dropped at the cap yet stored. One
            // window per gateway bounds how many such frames the ledger has to allow.
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
            let added = self.added_channels(id);
            // Distinct per device and per scenario seed, within TOML's i64.
            let device_seed = (seed.rotate_left(index as u32 * 7) ^ index as u64) >> 1;
            table.insert("seed".into(), Value::Integer(device_seed as i64));
            let Some(Value::Array(channels)) = table.get_mut("channels") else {
                bail!("devices[{index}] has no channels");
            };
            for channel in channels.iter_mut().filter_map(Value::as_table_mut) {
                channel.insert("period".into(), PERIOD.into());
                // Simulated dropouts and stuck values are the alert tests' business;
                // here every sample should become a reading.
                channel.remove("anomalies");
            }
            channels.extend(added.map(added_channel));
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
}

/// An added channel as the agent's configuration has it (the compressor's power model,
/// a cheap one); [`Workload::register_added_channels`] writes the same into
/// `device_channels`.
fn added_channel(id: u8) -> Value {
    let mut channel = Table::new();
    channel.insert("id".into(), Value::Integer(i64::from(id)));
    channel.insert("name".into(), format!("added-{id}").into());
    channel.insert("unit".into(), "kW".into());
    channel.insert("period".into(), PERIOD.into());
    channel.insert(
        "range".into(),
        Value::Array(vec![Value::Float(0.0), Value::Float(150.0)]),
    );
    let mut source = Table::new();
    source.insert("kind".into(), "simulated".into());
    source.insert("model".into(), "compressor_power".into());
    channel.insert("source".into(), Value::Table(source));
    Value::Table(channel)
}

/// How many channels each seed device has in `simulated-plant.toml`, in [`DEVICES`] order.
fn seed_channel_counts(config: &Table) -> Result<[u64; 5]> {
    let Some(Value::Array(all)) = config.get("devices") else {
        bail!("simulated-plant.toml has no [[devices]]");
    };
    let mut counts = [0u64; 5];
    for device in all {
        let id = device.get("id").and_then(Value::as_str).unwrap_or_default();
        if let Some(d) = DEVICES.iter().position(|&known| known == id) {
            counts[d] = device
                .get("channels")
                .and_then(Value::as_array)
                .map_or(0, |c| c.len() as u64);
        }
    }
    ensure!(
        counts.iter().all(|&n| n > 0),
        "simulated-plant.toml lacks some of {DEVICES:?}"
    );
    Ok(counts)
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
        for rate in [SEED_RATE, BENCH_RATE] {
            let workload = Workload::new(rate).unwrap();
            for gateway in workload.gateways() {
                let queue = Some(QueueSize {
                    segment_bytes: 4096,
                    max_bytes: 16384,
                });
                let path = workload
                    .agent_config(gateway, 42, 1883, queue, dir.path())
                    .unwrap();
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
                let channels = gateway.rate / 100;
                let devices = format!(
                    "publishing {} devices ({channels} channels)",
                    gateway.devices.len()
                );
                assert!(stdout.contains(&devices), "{stdout}");
            }
        }
    }

    #[test]
    fn the_seed_rate_is_todays_workload_and_the_bench_rate_the_benchmarks() {
        let seed = Workload::new(SEED_RATE).unwrap();
        assert_eq!(seed.rate(), SEED_RATE);
        let split: Vec<_> = seed.gateways().iter().map(|g| g.devices.clone()).collect();
        assert_eq!(split, [&DEVICES[..3], &DEVICES[3..]]);
        assert!(DEVICES
            .iter()
            .all(|d| seed.added_channels(d).next().is_none()));

        let bench = Workload::new(BENCH_RATE).unwrap();
        assert_eq!(bench.rate(), BENCH_RATE);
        assert_eq!(bench.gateways().len(), DEVICES.len());
        assert!(bench.gateways().iter().all(|g| g.rate == AGENT_RATE));
        assert!(Workload::new(SEED_RATE - 1).is_err());
        assert!(Workload::new(200_000).is_err());
    }
}
