//! The performance probe of `iotctl health`: readings sent the way a device sends them
//! (postcard frames, MQTT QoS 1, through the bridge, Kafka and the ingester) and timed
//! until PostgreSQL shows them, so "healthy" means data actually flows end to end.
//!
//! The probe has its own device, `iotctl-probe` (site and line `probe`), registered
//! disabled: a disabled device's readings are stored but never evaluated by the alert
//! rules, so the probe raises no alert (a one-channel device silent between two probes
//! would otherwise record a dropout). The device stays registered; its readings, hourly
//! statistics and Redis keys are deleted after every probe, so operator data is
//! untouched (readings that arrive after a failed probe gave up are deleted by a later
//! probe). The ingester re-reads the device table every minute, so right after the
//! first registration it dead-letters the probe's frames as unknown for up to a minute:
//! a warm-up frame is repeated until one is stored before the timed run starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use gateways::registry::{self, RegistryError};
use protocol::topic::{Topic, TopicKind};
use protocol::{BootId, DeviceId, Frame, FrameKey, Quality, Reading};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use serde::Serialize;
use sqlx::types::chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::watch;

use super::{Check, HealthArgs};
use crate::global::Global;
use crate::output::error_text;
use crate::services;
use service::clock::now_ms;

/// The probe's device id, site and line.
pub const DEVICE: &str = "iotctl-probe";
const SITE_LINE: &str = "probe";
/// Readings per frame: what the edge agent sends at most rates, and the size bar's case.
const PER_FRAME: u32 = 50;
/// Spacing of the probe's readings in device time (its channel's sampling period).
const PERIOD_MS: u32 = 10;
/// How often PostgreSQL is asked; the latency figures are this coarse.
const POLL: Duration = Duration::from_millis(10);
/// How often the warm-up frame is repeated while the ingester does not know the device.
const WARM_UP_REPEAT: Duration = Duration::from_secs(2);
/// Longest wait for a just-registered device: the ingester's catalog refresh (a minute)
/// and some slack.
const CATALOG_WAIT: Duration = Duration::from_secs(70);
/// Probe readings stored this long ago belong to no running probe: far longer than a
/// probe with the default timeouts lasts.
const LEFTOVER_AGE: Duration = Duration::from_secs(600);
/// Longest wait for the ingester's Redis write after the rows are visible.
const REDIS_WAIT: Duration = Duration::from_secs(2);

/// The probe's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurements {
    pub readings: u32,
    pub frames: u32,
    /// Frames the broker acknowledged (PUBACK).
    pub frames_acknowledged: u64,
    pub stored: i64,
    /// From the first publish to the last reading visible in PostgreSQL.
    pub seconds: f64,
    pub readings_per_s: f64,
    /// Publish of a frame to its readings visible in PostgreSQL, over the frames.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

const FIX: &str = "the probe publishes through the bridge: start it (`cargo run --release -p \
                   bridge`, embedded broker on 1883) or point --mqtt at the broker it reads; \
                   --no-probe skips the probe";

const FLOW_FIX: &str = "follow the readings: the bridge's /metrics (bridge_messages_*), Kafka \
                        sensors-data and sensors-dlq (the dlq-reason header), the ingester's \
                        /metrics and log; the bridge must produce to the topic the ingester \
                        consumes, and the ingester must write to this database";

pub async fn run(global: &Global, args: &HealthArgs, pool: &PgPool) -> Check {
    let mut options = match services::mqtt_options(global, "probe") {
        Ok(options) => options,
        Err(e) => return Check::fail("probe", error_text(&e), FIX),
    };
    options.set_inflight(100).set_clean_session(true);
    // Connect before touching the database, so a probe that cannot publish leaves no
    // trace.
    let (client, eventloop) = match services::mqtt_connect(options).await {
        Ok(connected) => connected,
        Err(e) => return Check::fail("probe", error_text(&e), FIX),
    };
    let link = Link::start(eventloop);
    let boots = [random_boot(), random_boot()];
    let result = probe(global, args, pool, &client, &link, boots).await;
    if client.disconnect().await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), link.finished()).await;
    }
    link.task.abort();

    let mut check = match &result {
        Ok(Verdict::Measured(run)) if run.figures.stored == i64::from(run.figures.readings) => {
            Check {
                measurements: Some(run.figures.clone()),
                ..Check::ok(
                    "probe",
                    success_text(&run.figures, &global.mqtt.to_string()),
                )
            }
        }
        Ok(Verdict::Measured(run)) => {
            let m = &run.figures;
            Check {
                measurements: Some(m.clone()),
                ..Check::fail(
                    "probe",
                    format!(
                        "only {} of {} readings reached PostgreSQL within {} s ({} of {} \
                         frames acknowledged by the broker at {})",
                        m.stored,
                        m.readings,
                        args.probe_timeout,
                        m.frames_acknowledged,
                        m.frames,
                        global.mqtt
                    ),
                    FLOW_FIX,
                )
            }
        }
        Ok(Verdict::Failed(detail)) => Check::fail("probe", detail.clone(), FLOW_FIX),
        Err(e) => Check::fail(
            "probe",
            error_text(e),
            "the probe could not run to the end: fix the cause named, or skip it with \
             --no-probe",
        ),
    };
    // After a complete run the ingester's Redis write is due: wait for it before deleting
    // the keys, or it would re-create them.
    let redis_due = match &result {
        Ok(Verdict::Measured(run)) if check.ok => Some(run.last_ts_ms),
        _ => None,
    };
    if let Err(e) = clean_up(global, pool, &boots, redis_due).await {
        check.detail.push_str(&format!(
            " (cleaning up after the probe failed: {})",
            error_text(&e)
        ));
    }
    check
}

fn success_text(m: &Measurements, mqtt: &str) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"));
    format!(
        "{} readings in {} frames via {mqtt} stored in {:.2} s: {:.0} readings/s end to end; \
         publish to row visible p50 {}, p99 {}",
        m.readings,
        m.frames,
        m.seconds,
        m.readings_per_s,
        ms(m.latency_p50_ms),
        ms(m.latency_p99_ms)
    )
}

/// A timed run: its figures, and the device time of its newest reading.
struct Run {
    figures: Measurements,
    last_ts_ms: i64,
}

enum Verdict {
    Measured(Run),
    /// The pipeline did not deliver (the warm-up never arrived).
    Failed(String),
}

/// The MQTT event loop, driven on its own task: counts PUBACKs and reports the first
/// connection error.
struct Link {
    acks: Arc<AtomicU64>,
    error: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    fn start(mut eventloop: EventLoop) -> Self {
        let acks = Arc::new(AtomicU64::new(0));
        let (error_tx, error) = watch::channel(None);
        let counter = acks.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = error_tx.send(Some(e.to_string()));
                        return;
                    }
                }
            }
        });
        Self { acks, error, task }
    }

    fn error(&self) -> Option<String> {
        self.error.borrow().clone()
    }

    /// Resolves when the event loop has stopped (after a disconnect or an error).
    async fn finished(&self) {
        let mut error = self.error.clone();
        let _ = error.wait_for(Option::is_some).await;
    }
}

async fn probe(
    global: &Global,
    args: &HealthArgs,
    pool: &PgPool,
    client: &AsyncClient,
    link: &Link,
    [warm_boot, boot]: [BootId; 2],
) -> Result<Verdict> {
    let newly_registered = register(pool).await?;
    let key = claim(global, pool).await?;
    let seal = |bytes: Vec<u8>| sealed(bytes, key.as_ref());
    let topic = Topic::new(
        &global.mqtt_prefix,
        SITE_LINE,
        SITE_LINE,
        DEVICE,
        TopicKind::Telemetry,
    )
    .map_err(|e| anyhow!("probe topic: {e}"))?
    .to_string();
    let timeout = Duration::from_secs(args.probe_timeout);
    let mqtt = &global.mqtt;

    // Warm-up: one reading, repeated until stored. It also takes the first-use costs
    // (connections, statement preparation) out of the timed run.
    let warm_wait = if newly_registered {
        eprintln!(
            "probe: registered device {DEVICE}; the ingester accepts it at its next device \
             refresh (within a minute), waiting"
        );
        timeout.max(CATALOG_WAIT)
    } else {
        timeout
    };
    let started = Instant::now();
    let mut next_send = started;
    let mut seq = 0;
    loop {
        if let Some(e) = link.error() {
            return Ok(Verdict::Failed(format!(
                "lost the connection to the MQTT broker at {mqtt}: {e}"
            )));
        }
        if Instant::now() >= next_send {
            let (_, bytes) = frame(warm_boot, seq, 1, now_ms())?;
            publish(client, &topic, seal(bytes)).await?;
            seq += 1;
            next_send += WARM_UP_REPEAT;
        }
        if progress(pool, warm_boot, None).await?.0 > 0 {
            break;
        }
        if started.elapsed() >= warm_wait {
            return Ok(Verdict::Failed(format!(
                "no probe reading reached PostgreSQL within {} s of publishing to {mqtt}{}",
                warm_wait.as_secs(),
                if newly_registered {
                    " (the device was registered just now: was the ingester's device list \
                     refreshed?)"
                } else {
                    ""
                }
            )));
        }
        tokio::time::sleep(POLL).await;
    }

    // The timed run: readings spaced PERIOD_MS apart in device time, the last one now.
    let readings = args.probe_readings;
    let span_ms = u64::from(readings) * u64::from(PERIOD_MS);
    let first_ts = now_ms().saturating_sub(span_ms);
    let mut frames = Vec::new();
    let mut last_seqs = Vec::new();
    for start in (0..readings).step_by(PER_FRAME as usize) {
        let count = PER_FRAME.min(readings - start);
        let base = first_ts + u64::from(start) * u64::from(PERIOD_MS);
        let (last_seq, bytes) = frame(boot, u64::from(start), count, base)?;
        last_seqs.push(last_seq);
        frames.push(seal(bytes));
    }
    let since = DateTime::<Utc>::from_timestamp_millis(first_ts as i64)
        .ok_or_else(|| anyhow!("the clock is out of range"))?;

    let publisher = {
        let client = client.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut sent = Vec::with_capacity(frames.len());
            for bytes in frames {
                sent.push(Instant::now());
                publish(&client, &topic, bytes).await?;
            }
            anyhow::Ok(sent)
        })
    };
    let acks_before = link.acks.load(Ordering::Relaxed);
    let deadline = Instant::now() + timeout;
    let mut visible = vec![None; last_seqs.len()];
    let mut stored = 0;
    while stored < i64::from(readings) && Instant::now() < deadline && link.error().is_none() {
        tokio::time::sleep(POLL).await;
        let asked = Instant::now();
        let (count, max_seq) = progress(pool, boot, Some(since)).await?;
        stored = count;
        if let Some(max_seq) = max_seq {
            mark_visible(&last_seqs, max_seq, asked, &mut visible);
        }
    }
    // A broker that keeps the connection but stops acknowledging would block the
    // publisher for good: it gets what is left of the deadline, and a second.
    let abort = publisher.abort_handle();
    let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
    let Ok(published) = tokio::time::timeout(left, publisher).await else {
        abort.abort();
        return Ok(Verdict::Failed(format!(
            "the MQTT broker at {mqtt} stopped taking the probe's frames ({stored} of \
             {readings} readings stored within {} s)",
            timeout.as_secs()
        )));
    };
    let sent = published
        .context("the publishing task failed")?
        .context("publishing the probe's frames")?;
    if stored < i64::from(readings) {
        if let Some(e) = link.error() {
            return Ok(Verdict::Failed(format!(
                "lost the connection to the MQTT broker at {mqtt} after {stored} of \
                 {readings} readings: {e}"
            )));
        }
    }
    let mut figures = measure(readings, stored, &sent, &visible);
    figures.frames_acknowledged = link.acks.load(Ordering::Relaxed) - acks_before;
    let last_ts_ms = i64::try_from(first_ts + span_ms).unwrap_or(i64::MAX) - i64::from(PERIOD_MS);
    Ok(Verdict::Measured(Run {
        figures,
        last_ts_ms,
    }))
}

/// Figures from each frame's publish instant and the instant its readings were seen
/// (`frames_acknowledged` is the caller's to fill).
fn measure(
    readings: u32,
    stored: i64,
    sent: &[Instant],
    visible: &[Option<Instant>],
) -> Measurements {
    let mut latencies: Vec<Duration> = sent
        .iter()
        .zip(visible)
        .filter_map(|(sent, seen)| seen.map(|seen| seen.saturating_duration_since(*sent)))
        .collect();
    latencies.sort_unstable();
    let elapsed = match (sent.first(), visible.iter().flatten().max()) {
        (Some(first), Some(last)) => last.saturating_duration_since(*first),
        _ => Duration::ZERO,
    };
    let seconds = elapsed.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Measurements {
        readings,
        frames: u32::try_from(sent.len()).unwrap_or(u32::MAX),
        frames_acknowledged: 0,
        stored,
        seconds,
        readings_per_s: if seconds > 0.0 {
            stored as f64 / seconds
        } else {
            0.0
        },
        latency_p50_ms: percentile(&latencies, 50.0).map(ms),
        latency_p99_ms: percentile(&latencies, 99.0).map(ms),
    }
}

/// Marks as visible at `at` every frame (by its last sequence number) that the newest
/// stored sequence number covers and that was not visible before. Frames of one device
/// reach PostgreSQL in order (one Kafka partition, batches committed in order), so the
/// newest sequence number stands for all before it.
fn mark_visible(last_seqs: &[u64], max_seq: i64, at: Instant, visible: &mut [Option<Instant>]) {
    for (last, seen) in last_seqs.iter().zip(visible.iter_mut()) {
        if seen.is_none() && i64::try_from(*last).is_ok_and(|last| last <= max_seq) {
            *seen = Some(at);
        }
    }
}

/// The value at percentile `p` (0..=100) of `sorted`, by the nearest-rank method (always
/// one of the samples), or `None` without samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn random_boot() -> BootId {
    BootId(rand::random())
}

/// A probe frame of `count` readings from `first_seq`, and its last sequence number.
fn frame(boot: BootId, first_seq: u64, count: u32, base_ts_ms: u64) -> Result<(u64, Vec<u8>)> {
    let device = DeviceId::new(DEVICE).map_err(|e| anyhow!("probe device id: {e}"))?;
    let mut frame = Frame::new(device, boot, first_seq, base_ts_ms);
    for i in 0..count {
        let seq = first_seq + u64::from(i);
        frame
            .readings
            .push(Reading {
                channel: 0,
                offset_ms: i * PERIOD_MS,
                // Varying values, so nothing downstream mistakes the probe for a stuck
                // sensor.
                value: (seq % 1000) as f32,
                quality: Quality::empty(),
            })
            .map_err(|_| anyhow!("a probe frame holds at most {}", protocol::MAX_READINGS))?;
    }
    let mut buf = [0u8; protocol::MAX_FRAME_LEN];
    let bytes = frame
        .encode(&mut buf)
        .map_err(|e| anyhow!("encoding a probe frame: {e}"))?;
    Ok((first_seq + u64::from(count) - 1, bytes.to_vec()))
}

async fn publish(client: &AsyncClient, topic: &str, bytes: Vec<u8>) -> Result<()> {
    client
        .publish(topic, QoS::AtLeastOnce, false, bytes)
        .await
        .context("the MQTT client stopped")
}

/// Under a gateway registry, the bridge forwards a frame only when it is sealed by the
/// gateway that speaks for its device: iotctl connecting as a gateway (`--mqtt-user`)
/// takes the probe device for it, and seals with the key of its secret.
async fn claim(global: &Global, pool: &PgPool) -> Result<Option<FrameKey>> {
    let Some((user, secret)) = services::mqtt_credentials(global)? else {
        return Ok(None);
    };
    let owner = registry::device_keys(pool, DEVICE)
        .await
        .context("reading the gateway registry")?;
    if owner.is_none_or(|keys| keys.gateway != user) {
        match registry::assign(pool, "iotctl", &user, &[DEVICE.to_owned()]).await {
            // A user of a broker without the registry: nothing to claim.
            Ok(_) | Err(RegistryError::Unknown(_)) => {}
            Err(e) => {
                return Err(anyhow!(e).context(format!("giving the probe device to gateway {user}")))
            }
        }
    }
    Ok(Some(FrameKey::derive(secret.as_bytes())))
}

fn sealed(frame: Vec<u8>, key: Option<&FrameKey>) -> Vec<u8> {
    let Some(key) = key else {
        return frame;
    };
    let mut out = [0u8; protocol::MAX_SEALED_LEN];
    match protocol::seal::seal(&frame, key, &mut out) {
        Ok(sealed) => sealed.to_vec(),
        Err(_) => frame,
    }
}

/// Registers the probe device and its channel (disabled, see the module documentation);
/// true if it did not exist yet.
async fn register(pool: &PgPool) -> Result<bool> {
    let mut tx = pool.begin().await.context("registering the probe device")?;
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO devices (device_id, name, kind, site, line, description, enabled) \
         VALUES ($1, 'iotctl performance probe', 'probe', $2, $2, \
                 'Synthetic readings of `iotctl health`, deleted after each probe.', false) \
         ON CONFLICT (device_id) DO NOTHING RETURNING device_id",
    )
    .bind(DEVICE)
    .bind(SITE_LINE)
    .fetch_optional(&mut *tx)
    .await
    .context("registering the probe device")?;
    sqlx::query(
        "INSERT INTO device_channels \
                (device_id, channel_id, name, unit, sample_period_ms, range_min, range_max) \
         VALUES ($1, 0, 'probe', '', $2, -1e9, 1e9) ON CONFLICT DO NOTHING",
    )
    .bind(DEVICE)
    .bind(PERIOD_MS as i32)
    .execute(&mut *tx)
    .await
    .context("registering the probe channel")?;
    tx.commit().await.context("registering the probe device")?;
    Ok(inserted.is_some())
}

/// How many readings of `boot` are stored, and the newest sequence number.
async fn progress(
    pool: &PgPool,
    boot: BootId,
    since: Option<DateTime<Utc>>,
) -> Result<(i64, Option<i64>)> {
    // The time bound lets PostgreSQL skip the day partitions the probe cannot be in.
    sqlx::query_as(
        "SELECT count(*), max(seq) FROM sensor_readings \
          WHERE device_id = $1 AND boot_id = $2 AND ($3::timestamptz IS NULL OR ts >= $3)",
    )
    .bind(DEVICE)
    .bind(boot.as_i64())
    .bind(since)
    .fetch_one(pool)
    .await
    .context("counting the probe's readings in sensor_readings")
}

/// Deletes what the probe left: its readings, its hourly statistics and its Redis keys.
/// With `redis_due` (the newest reading's time, after a complete run), first waits
/// briefly for the ingester's Redis write, which follows the commit, so it does not
/// re-create the keys after they are deleted.
async fn clean_up(
    global: &Global,
    pool: &PgPool,
    boots: &[BootId],
    redis_due: Option<i64>,
) -> Result<()> {
    let boot_ids: Vec<i64> = boots.iter().map(|b| b.as_i64()).collect();
    // Also the leftovers of earlier probes that gave up: frames still in the pipeline
    // then (say, while the ingester was down) are stored after their clean-up. Only old
    // ones, so a probe running at the same time keeps its readings.
    sqlx::query(
        "DELETE FROM sensor_readings WHERE device_id = $1 \
            AND (boot_id = ANY($2) OR received_at < now() - make_interval(secs => $3))",
    )
    .bind(DEVICE)
    .bind(&boot_ids)
    .bind(LEFTOVER_AGE.as_secs_f64())
    .execute(pool)
    .await
    .context("deleting the probe's readings")?;
    sqlx::query("DELETE FROM device_stats_hourly WHERE device_id = $1")
        .bind(DEVICE)
        .execute(pool)
        .await
        .context("deleting the probe's hourly statistics")?;
    if global.redis_url.is_none() {
        return Ok(());
    }
    let mut redis = services::redis(global).await?;
    let layout = services::redis_keys(global);
    let last_seen = layout.last_seen(DEVICE);
    if let Some(newest_ms) = redis_due {
        let waited = Instant::now();
        while waited.elapsed() < REDIS_WAIT {
            let seen: Option<i64> = redis::cmd("GET")
                .arg(&last_seen)
                .query_async(&mut redis)
                .await?;
            if seen.is_some_and(|ms| ms >= newest_ms) {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let keys = [
        layout.latest(DEVICE),
        layout.recent(DEVICE),
        last_seen,
        // The order beside last_seen: which boot and seq wrote it (the ingester's clock
        // policy), so a stale value cannot move it back.
        layout.last_seen_order(DEVICE),
    ];
    let () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let hundred: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(ms(50)));
        assert_eq!(percentile(&hundred, 99.0), Some(ms(99)));
        assert_eq!(percentile(&hundred, 100.0), Some(ms(100)));
        assert_eq!(percentile(&hundred, 0.0), Some(ms(1)));
        let ten: Vec<Duration> = (1..=10).map(|v| ms(v * 10)).collect();
        // Rank ceil(0.99 * 10) = 10: with few samples p99 is the worst one.
        assert_eq!(percentile(&ten, 99.0), Some(ms(100)));
        assert_eq!(percentile(&ten, 50.0), Some(ms(50)));
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn visibility_goes_to_the_frames_the_newest_seq_covers() {
        let last_seqs = [49, 99, 149];
        let t0 = Instant::now();
        let (t1, t2) = (t0 + ms(10), t0 + ms(20));
        let mut visible = vec![None; 3];
        mark_visible(&last_seqs, 60, t0, &mut visible);
        assert_eq!(visible, [Some(t0), None, None]);
        mark_visible(&last_seqs, 99, t1, &mut visible);
        assert_eq!(visible, [Some(t0), Some(t1), None]);
        mark_visible(&last_seqs, 149, t2, &mut visible);
        assert_eq!(visible, [Some(t0), Some(t1), Some(t2)]);
    }

    #[test]
    fn measurements_from_instants() {
        let t0 = Instant::now();
        let sent = [t0, t0 + ms(100)];
        let visible = [Some(t0 + ms(40)), Some(t0 + ms(500))];
        let m = measure(100, 100, &sent, &visible);
        assert_eq!(m.seconds, 0.5);
        assert_eq!(m.readings_per_s, 200.0);
        assert_eq!(m.latency_p50_ms, Some(40.0));
        assert_eq!(m.latency_p99_ms, Some(400.0));

        let none = measure(100, 0, &sent, &[None, None]);
        assert_eq!((none.readings_per_s, none.latency_p50_ms), (0.0, None));
    }

    #[test]
    fn probe_frames_decode_with_consecutive_seqs() {
        let boot = BootId([1; 8]);
        let (last, bytes) = frame(boot, 100, 50, 1_764_000_000_000).unwrap();
        assert_eq!(last, 149);
        let decoded = Frame::decode(&bytes).unwrap();
        assert_eq!(decoded.device.as_str(), DEVICE);
        assert_eq!(decoded.readings.len(), 50);
        let (seq, ts, _) = decoded.iter().last().unwrap();
        assert_eq!(
            (seq, ts),
            (149, 1_764_000_000_000 + 49 * u64::from(PERIOD_MS))
        );
    }
}
