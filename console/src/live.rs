//! The live view, read once for every viewer. One task looks at Redis every
//! `live.interval` (the `latest` hash and `last_seen` of each device, the open-alerts
//! hash: one pipelined round trip) and at PostgreSQL's device list every
//! `live.plant_refresh`, and publishes a [`Snapshot`]. Pages render from the newest
//! snapshot and `/events` streams its changes, so a hundred viewers cost what one does:
//! no viewer ever queries Redis, and none queries PostgreSQL for the live view.
//!
//! A snapshot carries the change from the one before it (`delta`, JSON); a viewer that
//! saw the previous version gets only that, one that missed versions gets the whole
//! view (`full`), so a slow browser skips frames instead of falling behind.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use contracts::alerts::AlertView;
use contracts::redis::{LatestValue, RedisKeys};
use observe::agents::AgentReports;
use protocol::Quality;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::plant::{Channel, Device, Level};

/// A sparkline's step: it holds the last value of each 30 s slot...
pub const SPARK_STEP_MS: i64 = 30_000;
/// ...of the last 10 minutes: 20 points, small enough for 1 500 tiles in one page load.
pub const SPARK_SLOTS: i64 = 20;

/// One channel's tile as the viewer sees it. Short names on the wire: a plant's
/// updates carry a thousand of them every interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tile {
    /// `furnace-01/0`, the element's key in the page.
    #[serde(rename = "i")]
    pub id: String,
    /// The value as measured, or `None` when the sensor faulted (NaN) or nothing came
    /// yet.
    #[serde(rename = "v")]
    pub value: Option<String>,
    /// The reading's time (ms since the epoch, device clock).
    #[serde(rename = "t")]
    pub ts: Option<i64>,
    #[serde(rename = "l")]
    pub level: Level,
    /// Quality flags in words.
    #[serde(rename = "f", skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<&'static str>,
    /// The last 10 minutes: (slot, value), a slot being `ts / SPARK_STEP_MS`, oldest
    /// first. Served once per page load (`/sparks`); the browser extends it from the
    /// values that follow, so updates do not carry it.
    #[serde(skip)]
    pub spark: Arc<Vec<(i64, f32)>>,
}

/// One device's presence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Presence {
    #[serde(rename = "i")]
    pub id: String,
    /// Its newest reading's time, while Redis keeps `last_seen` (it expires when the
    /// device falls silent).
    #[serde(rename = "s")]
    pub last_seen: Option<i64>,
    /// What its agent's retained status says (`online`, `offline`), if it was heard.
    #[serde(rename = "r")]
    pub reported: Option<String>,
}

/// What every viewer sees at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Grows by one at each change.
    pub version: u64,
    /// The plant as PostgreSQL last described it.
    pub plant: Arc<Vec<Device>>,
    /// Whether the last read of the device list worked.
    pub postgres_up: bool,
    /// Whether the last look at Redis worked; if not, the values are the last known.
    pub redis_up: bool,
    /// By `device/channel`.
    pub tiles: BTreeMap<String, Tile>,
    /// By device.
    pub presence: BTreeMap<String, Presence>,
    /// The open and acknowledged alerts, by id.
    pub alerts: BTreeMap<i64, AlertView>,
    /// The change from `version - 1`, as the JSON `/events` sends.
    pub delta: Arc<str>,
    full: OnceLock<Arc<str>>,
}

/// What `/events` sends: the whole view or a change to it.
#[derive(Debug, Serialize)]
struct Update<'a> {
    version: u64,
    live: bool,
    history: bool,
    tiles: Vec<&'a Tile>,
    devices: Vec<&'a Presence>,
    /// Open alerts, and a fingerprint of them that changes whenever one does.
    open_alerts: usize,
    alerts_version: u64,
    /// Changes when a device or channel comes, goes or changes: the page is rebuilt.
    plant: u64,
}

impl Snapshot {
    /// The whole view as JSON, made once per snapshot, for the viewers that need it.
    pub fn full(&self) -> Arc<str> {
        self.full
            .get_or_init(|| {
                self.update(
                    self.tiles.values().collect(),
                    self.presence.values().collect(),
                )
            })
            .clone()
    }

    fn update(&self, tiles: Vec<&Tile>, devices: Vec<&Presence>) -> Arc<str> {
        let update = Update {
            version: self.version,
            live: self.redis_up,
            history: self.postgres_up,
            tiles,
            devices,
            open_alerts: self.alerts.len(),
            alerts_version: self.alerts_version(),
            plant: fingerprint(&self.plant),
        };
        serde_json::to_string(&update)
            .unwrap_or_else(|_| "{}".to_owned())
            .into()
    }

    /// Changes whenever the set of open alerts or any of them changes.
    pub fn alerts_version(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for (id, alert) in &self.alerts {
            id.hash(&mut hasher);
            alert.state.hash(&mut hasher);
            alert.severity.hash(&mut hasher);
        }
        hasher.finish()
    }

    pub fn device(&self, id: &str) -> Option<&Device> {
        self.plant.iter().find(|d| d.device_id == id)
    }

    pub fn tile(&self, device: &str, channel: i16) -> Option<&Tile> {
        self.tiles.get(&tile_id(device, channel))
    }
}

/// How often the devices are looked for in Redis while PostgreSQL has never answered.
const DISCOVERY_REFRESH: Duration = Duration::from_secs(10);

/// How often PostgreSQL is asked whether it answers, between reads of the device list.
const POSTGRES_CHECK: Duration = Duration::from_secs(2);

/// Reads the device list now and every `refresh`, and asks PostgreSQL every
/// [`POSTGRES_CHECK`] in between whether it answers (what the banners show): the last
/// list read, and whether the last question was answered (`None` until the first).
fn plant_reader(
    pool: PgPool,
    refresh: Duration,
    stop: CancellationToken,
) -> watch::Receiver<(Arc<Vec<Device>>, Option<bool>)> {
    let (tx, rx) = watch::channel((Arc::default(), None));
    tokio::spawn(async move {
        let mut was_up = true;
        let mut read_at: Option<Instant> = None;
        loop {
            let due = read_at.is_none_or(|at| at.elapsed() >= refresh);
            let answer = if due {
                crate::plant::devices(&pool).await.map(Some)
            } else {
                sqlx::query("SELECT 1").execute(&pool).await.map(|_| None)
            };
            let up = answer.is_ok();
            match answer {
                Ok(Some(devices)) => {
                    read_at = Some(Instant::now());
                    tx.send_modify(|(plant, _)| {
                        if **plant != devices {
                            *plant = Arc::new(devices);
                        }
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    if was_up {
                        tracing::warn!("PostgreSQL does not answer: {e}");
                    }
                    // Read the list again as soon as it answers.
                    read_at = None;
                }
            }
            tx.send_if_modified(|(_, current)| current.replace(up) != Some(up));
            was_up = up;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POSTGRES_CHECK.min(refresh)) => {}
            }
        }
    });
    rx
}

/// What the overview's layout depends on, hashed: devices with their place and
/// channels with their names, units and thresholds.
fn fingerprint(plant: &[Device]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for device in plant {
        (
            &device.device_id,
            &device.name,
            &device.site,
            &device.line,
            device.enabled,
        )
            .hash(&mut hasher);
        for c in &device.channels {
            (c.channel_id, &c.name, &c.unit).hash(&mut hasher);
            for threshold in [c.warn_low, c.warn_high, c.crit_low, c.crit_high] {
                threshold.map(f64::to_bits).hash(&mut hasher);
            }
        }
    }
    hasher.finish()
}

pub fn tile_id(device: &str, channel: i16) -> String {
    format!("{device}/{channel}")
}

/// What the reader found in Redis for one device.
struct DeviceRead {
    latest: Vec<(i16, LatestValue)>,
    last_seen: Option<i64>,
}

/// The live view's reader: owns the connections and the sparkline history.
pub struct Reader {
    pool: PgPool,
    redis: redis::Client,
    /// The agents' retained statuses, for each device's reported state.
    agents: watch::Receiver<Result<AgentReports, String>>,
    connection: Option<MultiplexedConnection>,
    keys: RedisKeys,
    interval: Duration,
    plant_refresh: Duration,
    sparks: BTreeMap<String, Arc<Vec<(i64, f32)>>>,
    sender: watch::Sender<Arc<Snapshot>>,
}

impl Reader {
    pub fn new(
        pool: PgPool,
        redis: redis::Client,
        keys: RedisKeys,
        agents: watch::Receiver<Result<AgentReports, String>>,
        interval: Duration,
        plant_refresh: Duration,
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let (sender, receiver) = watch::channel(Arc::new(Snapshot::default()));
        let reader = Self {
            pool,
            redis,
            agents,
            connection: None,
            keys,
            interval,
            plant_refresh,
            sparks: BTreeMap::new(),
            sender,
        };
        (reader, receiver)
    }

    /// Reads and publishes until `stop`. The device list is read by a task of its own,
    /// so a PostgreSQL that does not answer never holds up the live values.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut plant_rx = plant_reader(self.pool.clone(), self.plant_refresh, stop.clone());
        // The first answer (or failure) first: a plant not yet asked for is not missing.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = plant_rx.wait_for(|(_, up)| up.is_some()) => {}
        }
        // Devices found in Redis while PostgreSQL has never answered, and when.
        let mut discovered: (Arc<Vec<Device>>, Option<Instant>) = (Arc::default(), None);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let (mut plant, postgres_up) = plant_rx.borrow_and_update().clone();
            let postgres_up = postgres_up.unwrap_or(false);
            if plant.is_empty() && !postgres_up {
                if discovered
                    .1
                    .is_none_or(|at| at.elapsed() >= DISCOVERY_REFRESH)
                {
                    if let Some(devices) = self.devices_in_redis().await {
                        discovered = (Arc::new(devices), Some(Instant::now()));
                    }
                }
                plant = discovered.0.clone();
            }
            let started = Instant::now();
            let read = self.read_redis(&plant).await;
            metrics::histogram!("console_live_read_seconds").record(started.elapsed());
            self.publish(&plant, postgres_up, read);
        }
    }

    /// The devices and channels Redis holds values of, for an overview while PostgreSQL
    /// has never answered: ids only, no names, units or thresholds.
    async fn devices_in_redis(&mut self) -> Option<Vec<Device>> {
        let mut connection = self.connection().await.ok()?;
        let pattern = format!("{}*", self.keys.latest_prefix());
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .ok()?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() > 10_000 {
                break;
            }
        }
        keys.sort();
        let mut devices = Vec::new();
        for key in keys {
            // SCAN's pattern is a glob: a prefix with `*` or `?` may match other keys.
            let Some(id) = key.strip_prefix(&self.keys.latest_prefix()) else {
                continue;
            };
            if protocol::validate_id(id).is_err() {
                continue;
            }
            let id = id.to_owned();
            let fields: Vec<String> = redis::cmd("HKEYS")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .ok()?;
            let mut channels: Vec<i16> = fields.iter().filter_map(|f| f.parse().ok()).collect();
            channels.sort_unstable();
            devices.push(Device::known_only_by_id(&id, &channels));
        }
        Some(devices)
    }

    async fn connection(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let connection = self
            .redis
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Every device's `latest` and `last_seen`, and the open alerts, in one round trip.
    async fn read_redis(
        &mut self,
        plant: &[Device],
    ) -> Option<(BTreeMap<String, DeviceRead>, BTreeMap<i64, AlertView>)> {
        let mut connection = match self.connection().await {
            Ok(connection) => connection,
            Err(e) => {
                tracing::debug!("Redis: {e}");
                return None;
            }
        };
        let mut pipe = redis::pipe();
        for device in plant {
            pipe.hgetall(self.keys.latest(&device.device_id));
            pipe.get(self.keys.last_seen(&device.device_id));
        }
        pipe.hgetall(self.keys.open_alerts());
        let replies: Vec<redis::Value> = match pipe.query_async(&mut connection).await {
            Ok(replies) => replies,
            Err(e) => {
                tracing::debug!("Redis: {e}");
                self.connection = None;
                return None;
            }
        };
        let mut replies = replies.into_iter();
        let mut devices = BTreeMap::new();
        for device in plant {
            let latest: BTreeMap<String, String> =
                redis::from_redis_value(replies.next()?).unwrap_or_default();
            let last_seen: Option<i64> =
                redis::from_redis_value(replies.next()?).unwrap_or_default();
            let latest = latest
                .into_iter()
                .filter_map(|(channel, json)| {
                    // A field the ingester did not write is skipped, not fatal.
                    Some((channel.parse().ok()?, serde_json::from_str(&json).ok()?))
                })
                .collect();
            devices.insert(device.device_id.clone(), DeviceRead { latest, last_seen });
        }
        let open: BTreeMap<String, String> =
            redis::from_redis_value(replies.next()?).unwrap_or_default();
        let alerts = open
            .into_iter()
            .filter_map(|(id, json)| Some((id.parse().ok()?, serde_json::from_str(&json).ok()?)))
            .collect();
        Some((devices, alerts))
    }

    fn publish(
        &mut self,
        plant: &Arc<Vec<Device>>,
        postgres_up: bool,
        read: Option<(BTreeMap<String, DeviceRead>, BTreeMap<i64, AlertView>)>,
    ) {
        let previous = self.sender.borrow().clone();
        let redis_up = read.is_some();
        let (tiles, presence, alerts) = match read {
            Some((devices, alerts)) => {
                let (tiles, presence) = self.tiles(plant, &devices, &alerts);
                (tiles, presence, alerts)
            }
            // Redis is away: the last known values stay, marked paused by `redis_up`.
            None => (
                previous.tiles.clone(),
                previous.presence.clone(),
                previous.alerts.clone(),
            ),
        };
        let changed_tiles: Vec<&Tile> = tiles
            .iter()
            .filter(|(id, tile)| previous.tiles.get(*id) != Some(tile))
            .map(|(_, tile)| tile)
            .collect();
        let changed_presence: Vec<&Presence> = presence
            .iter()
            .filter(|(id, p)| previous.presence.get(*id) != Some(p))
            .map(|(_, p)| p)
            .collect();
        let unchanged = changed_tiles.is_empty()
            && changed_presence.is_empty()
            && alerts == previous.alerts
            && redis_up == previous.redis_up
            && postgres_up == previous.postgres_up
            && Arc::ptr_eq(plant, &previous.plant)
            && previous.version > 0;
        if unchanged {
            return;
        }
        let mut next = Snapshot {
            version: previous.version + 1,
            plant: plant.clone(),
            postgres_up,
            redis_up,
            tiles: BTreeMap::new(),
            presence: BTreeMap::new(),
            alerts,
            delta: Arc::from(""),
            full: OnceLock::new(),
        };
        next.delta = next.update(changed_tiles, changed_presence);
        next.tiles = tiles;
        next.presence = presence;
        self.sender.send_replace(Arc::new(next));
    }

    fn tiles(
        &mut self,
        plant: &[Device],
        devices: &BTreeMap<String, DeviceRead>,
        alerts: &BTreeMap<i64, AlertView>,
    ) -> (BTreeMap<String, Tile>, BTreeMap<String, Presence>) {
        let mut tiles = BTreeMap::new();
        let mut presence = BTreeMap::new();
        let reported = match &*self.agents.borrow() {
            Ok(reports) => reports.devices.clone(),
            Err(_) => Default::default(),
        };
        for device in plant {
            let read = devices.get(&device.device_id);
            presence.insert(
                device.device_id.clone(),
                Presence {
                    id: device.device_id.clone(),
                    last_seen: read.and_then(|r| r.last_seen),
                    reported: reported.get(&device.device_id).cloned(),
                },
            );
            for channel in &device.channels {
                let latest = read.and_then(|r| {
                    r.latest
                        .iter()
                        .find(|(c, _)| *c == channel.channel_id)
                        .map(|(_, v)| v)
                });
                let id = tile_id(&device.device_id, channel.channel_id);
                let spark = self.sparks.entry(id.clone()).or_default();
                if let Some(LatestValue { ts, v: Some(v), .. }) = latest {
                    let slot = ts.div_euclid(SPARK_STEP_MS);
                    match spark.last() {
                        Some((last, value)) if *last == slot && value == v => {}
                        // An older reading than the newest drawn; but one far behind it
                        // means the newest was dated ahead (a device clock gone wrong),
                        // and the line starts again rather than freeze.
                        Some((last, _)) if *last > slot && *last - slot <= SPARK_SLOTS => {}
                        Some((last, _)) if *last > slot => *spark = Arc::new(vec![(slot, *v)]),
                        _ => {
                            // Copied only when it changes: the published snapshot shares
                            // the old one.
                            let points = Arc::make_mut(spark);
                            if points.last().is_some_and(|(last, _)| *last == slot) {
                                points.pop();
                            }
                            points.push((slot, *v));
                            let old = points.partition_point(|(s, _)| *s <= slot - SPARK_SLOTS);
                            points.drain(..old);
                        }
                    }
                }
                tiles.insert(
                    id.clone(),
                    tile(id, channel, latest, alerts, spark, &device.device_id),
                );
            }
        }
        (tiles, presence)
    }
}

fn tile(
    id: String,
    channel: &Channel,
    latest: Option<&LatestValue>,
    alerts: &BTreeMap<i64, AlertView>,
    spark: &Arc<Vec<(i64, f32)>>,
    device: &str,
) -> Tile {
    let by_value = latest
        .and_then(|l| l.v)
        .map_or(Level::Normal, |v| channel.level(f64::from(v)));
    let by_alert = alerts
        .values()
        .filter(|a| a.device_id == device && a.channel_id == Some(channel.channel_id))
        .map(|a| Level::of_severity(&a.severity))
        .max()
        .unwrap_or(Level::Normal);
    let quality = latest.map_or(Quality::empty(), |l| Quality::from_bits_truncate(l.q as u8));
    let mut flags = Vec::new();
    if quality.contains(Quality::SENSOR_FAULT) || latest.is_some_and(|l| l.v.is_none()) {
        flags.push("sensor fault");
    }
    if quality.contains(Quality::OUT_OF_RANGE) {
        flags.push("out of range");
    }
    if quality.contains(Quality::SIMULATED_ANOMALY) {
        flags.push("simulated anomaly");
    }
    Tile {
        id,
        value: latest.and_then(|l| l.v).map(|v| v.to_string()),
        ts: latest.map(|l| l.ts),
        level: by_value.max(by_alert),
        flags,
        spark: spark.clone(),
    }
}
