//! What the agents actually put on the wire, and how long it takes to reach PostgreSQL.
//!
//! An MQTT subscriber on the bridge's embedded broker sees every telemetry frame the
//! agents publish: it counts frames, readings and payload bytes (the agents' hop rate and
//! bytes per reading), and, while latency tracking is on, records each frame's arrival
//! time keyed by (device, boot id, first seq). A poller asks PostgreSQL every
//! [`POLL_INTERVAL`] which of the pending frames' first readings are now visible and
//! records `visible − arrival` on the same (monotonic) clock of this process.
//!
//! Method and its error: the arrival is when the broker delivered the frame to the
//! subscriber, a fraction of a millisecond after the agent's publish reached the broker.
//! "Visible" is the start of the first poll whose snapshot contains the row, so a
//! latency is over-estimated by at most one poll interval plus one poll's duration. The
//! time a reading waits in its agent before its frame is sealed (`batch.max_age`,
//! `max_readings`) is not part of publish → row.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::Frame;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::postgres::PgPool;

pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

struct Pending {
    device: String,
    boot: i64,
    seq: i64,
    /// The first reading's time, ms since the epoch: part of the dedup key, so the
    /// lookup is one index probe in one partition.
    ts_ms: i64,
    arrived: Instant,
}

#[derive(Default)]
struct State {
    frames: AtomicU64,
    readings: AtomicU64,
    bytes: AtomicU64,
    undecodable: AtomicU64,
    /// Device-id prefix whose frames are tracked for latency; None: not tracking.
    track: Mutex<Option<String>>,
    pending: Mutex<Vec<Pending>>,
    latencies_ms: Mutex<Vec<f64>>,
    polls: AtomicU64,
    poll_micros: AtomicU64,
    poll_errors: AtomicU64,
    stop: AtomicBool,
    /// The last retained gateway status (`…/<gateway>/status` with a `health` object) per
    /// topic, and when it arrived.
    statuses: Mutex<std::collections::HashMap<String, (Instant, serde_json::Value)>>,
}

/// Counters of what the subscriber has seen so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub frames: u64,
    pub readings: u64,
    pub bytes: u64,
    pub undecodable: u64,
}

/// Latency percentiles in ms.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// Frames whose first reading was not visible within the grace period.
    pub unseen: usize,
    pub mean_poll_ms: f64,
}

pub struct Probe {
    state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probe {
    /// Subscribes to every telemetry topic on the broker at `port` and starts the
    /// PostgreSQL poller.
    pub async fn start(port: u16, pool: PgPool) -> anyhow::Result<Self> {
        let state = Arc::new(State::default());
        let mut options = MqttOptions::new(testkit::unique_name("probe"), "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 1000);
        client
            .subscribe("plant/+/+/+/telemetry", QoS::AtMostOnce)
            .await
            .context("subscribing the probe")?;
        client
            .subscribe("plant/+/+/+/status", QoS::AtMostOnce)
            .await
            .context("subscribing the probe to the status topics")?;
        let seen = state.clone();
        let subscriber = tokio::spawn(async move {
            let _client = client;
            while !seen.stop.load(Ordering::Relaxed) {
                let event = match events.poll().await {
                    Ok(e) => e,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Event::Incoming(Packet::Publish(p)) = event else {
                    continue;
                };
                let arrived = Instant::now();
                if p.topic.ends_with("/status") {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                        if v.get("health").is_some() {
                            lock(&seen.statuses).insert(p.topic.clone(), (arrived, v));
                        }
                    }
                    continue;
                }
                let Ok(frame) = Frame::decode(&p.payload) else {
                    seen.undecodable.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                seen.frames.fetch_add(1, Ordering::Relaxed);
                seen.readings
                    .fetch_add(frame.readings.len() as u64, Ordering::Relaxed);
                seen.bytes
                    .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                let tracked = lock(&seen.track)
                    .as_deref()
                    .is_some_and(|prefix| frame.device.as_str().starts_with(prefix));
                if tracked {
                    let first = frame.readings.first().map(|r| frame.timestamp_ms(r));
                    if let (Ok(seq), Some(Ok(ts_ms))) =
                        (i64::try_from(frame.first_seq), first.map(i64::try_from))
                    {
                        lock(&seen.pending).push(Pending {
                            device: frame.device.as_str().to_owned(),
                            boot: frame.boot_id.as_i64(),
                            seq,
                            ts_ms,
                            arrived,
                        });
                    }
                }
            }
        });
        let polled = state.clone();
        let poller = tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !polled.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                poll_once(&polled, &pool).await;
            }
        });
        // Let the subscription settle before anything is measured.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self {
            state,
            tasks: vec![subscriber, poller],
        })
    }

    pub fn counts(&self) -> Counts {
        Counts {
            frames: self.state.frames.load(Ordering::Relaxed),
            readings: self.state.readings.load(Ordering::Relaxed),
            bytes: self.state.bytes.load(Ordering::Relaxed),
            undecodable: self.state.undecodable.load(Ordering::Relaxed),
        }
    }

    /// Starts recording arrivals of frames of devices whose id starts with `prefix`.
    pub fn track(&self, prefix: &str) {
        lock(&self.state.latencies_ms).clear();
        lock(&self.state.pending).clear();
        self.state.polls.store(0, Ordering::Relaxed);
        self.state.poll_micros.store(0, Ordering::Relaxed);
        *lock(&self.state.track) = Some(prefix.to_owned());
    }

    /// Stops recording new arrivals, waits up to `grace` for the pending frames to become
    /// visible, and returns the percentiles.
    pub async fn finish_tracking(&self, grace: Duration) -> Latency {
        *lock(&self.state.track) = None;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !lock(&self.state.pending).is_empty() {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let unseen = {
            let mut pending = lock(&self.state.pending);
            let n = pending.len();
            pending.clear();
            n
        };
        let mut values = std::mem::take(&mut *lock(&self.state.latencies_ms));
        values.sort_by(f64::total_cmp);
        let pick = |q: f64| -> f64 {
            if values.is_empty() {
                return f64::NAN;
            }
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[rank - 1]
        };
        let polls = self.state.polls.load(Ordering::Relaxed).max(1);
        Latency {
            samples: values.len(),
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: values.last().copied().unwrap_or(f64::NAN),
            unseen,
            mean_poll_ms: self.state.poll_micros.load(Ordering::Relaxed) as f64
                / 1000.0
                / polls as f64,
        }
    }

    /// The `health` objects of the gateways whose id starts with `prefix`, from the last
    /// status each published at or after `since` (the agents publish it every
    /// `health.interval`).
    pub fn gateway_health(&self, prefix: &str, since: Instant) -> Vec<serde_json::Value> {
        lock(&self.state.statuses)
            .iter()
            .filter(|(topic, (at, _))| {
                *at >= since
                    && topic
                        .rsplit('/')
                        .nth(1)
                        .is_some_and(|gw| gw.starts_with(prefix))
            })
            .filter_map(|(_, (_, v))| v.get("health").cloned())
            .collect()
    }

    pub fn poll_errors(&self) -> u64 {
        self.state.poll_errors.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        self.state.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn poll_once(state: &State, pool: &PgPool) {
    let (devices, boots, seqs, times) = {
        let pending = lock(&state.pending);
        if pending.is_empty() {
            return;
        }
        let mut d = Vec::with_capacity(pending.len());
        let mut b = Vec::with_capacity(pending.len());
        let mut s = Vec::with_capacity(pending.len());
        let mut t = Vec::with_capacity(pending.len());
        for p in pending.iter() {
            d.push(p.device.clone());
            b.push(p.boot);
            s.push(p.seq);
            t.push(p.ts_ms);
        }
        (d, b, s, t)
    };
    let started = Instant::now();
    let found: Result<Vec<(String, i64, i64)>, sqlx::Error> = sqlx::query_as(
        "SELECT p.d, p.b, p.s FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS p(d, b, s, t) \
         WHERE EXISTS (SELECT 1 FROM sensor_readings r \
                       WHERE r.device_id = p.d AND r.boot_id = p.b AND r.seq = p.s \
                         AND r.ts = 'epoch'::timestamptz + p.t * interval '1 millisecond')",
    )
    .bind(&devices)
    .bind(&boots)
    .bind(&seqs)
    .bind(&times)
    .fetch_all(pool)
    .await;
    state.polls.fetch_add(1, Ordering::Relaxed);
    state
        .poll_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    let found = match found {
        Ok(f) => f,
        Err(_) => {
            state.poll_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if found.is_empty() {
        return;
    }
    let found: std::collections::HashSet<(String, i64, i64)> = found.into_iter().collect();
    let mut latencies = Vec::new();
    lock(&state.pending).retain(|p| {
        if found.contains(&(p.device.clone(), p.boot, p.seq)) {
            latencies.push(started.saturating_duration_since(p.arrived).as_secs_f64() * 1000.0);
            false
        } else {
            true
        }
    });
    lock(&state.latencies_ms).extend(latencies);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
