//! The running agent: samples every channel on its own period, batches each device's
//! readings into frames, and hands them to [`Delivery`] through the disk queue.
//!
//! One thread samples all devices (a timer heap, not a task per channel) and one task on
//! a current-thread runtime delivers; that keeps the whole agent small enough for the
//! Pi's memory bar, and the queue's fsyncs, which block delivery, off the sampling
//! schedule (see [`Sampler`]). Shutdown is ordered: stop sampling, seal every open
//! batch, let delivery drain within a grace period, publish `offline`, sync the queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::{BootId, DeviceId, Frame, MAX_FRAME_LEN};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::batcher::Batcher;
use crate::clock;
use crate::config::AgentConfig;
use crate::delivery::{Delivery, Outbound};
use crate::queue::{DiskQueue, QueueConfig};
use crate::sensors::{self, FaultTracker, Source};
use crate::status::Health;
use crate::topics::Topics;

/// What a finished run leaves behind, for logs and tests.
#[derive(Debug)]
pub struct RunReport {
    pub boot_id: BootId,
    /// Per device: how many readings were sealed into frames (their seqs are 0..n).
    pub sealed: Vec<(String, u64)>,
    pub health: Health,
}

struct Channel {
    device: usize,
    id: u8,
    period: Duration,
    range: Option<[f64; 2]>,
    source: Box<dyn Source>,
    faults: FaultTracker,
}

/// Runs until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> anyhow::Result<RunReport> {
    let boot_id = BootId(rand::rng().random());
    let boot_hex = boot_id.to_string();
    let (queue, report) = DiskQueue::open(QueueConfig {
        dir: config.queue.dir.clone(),
        segment_bytes: config.queue.segment_bytes.as_u64(),
        max_bytes: config.queue.max_bytes.as_u64(),
    })
    .with_context(|| format!("opening the frame queue in {}", config.queue.dir.display()))?;
    info!(boot_id = %boot_hex, queue = %report, "edge agent starting");

    let mut channels = Vec::new();
    let mut batchers = Vec::new();
    for (d, device) in config.devices.iter().enumerate() {
        let id = DeviceId::new(&device.id).context("device id (validated)")?;
        batchers.push(Batcher::new(
            id,
            boot_id,
            config.batch.max_readings,
            config.batch.max_age,
        ));
        for (c, channel) in device.channels.iter().enumerate() {
            let seed = device.seed() ^ (u64::from(channel.id) << 56) ^ c as u64;
            let source = sensors::build_source(
                &channel.source,
                channel.anomalies.as_ref(),
                seed,
                channel.period,
            )
            .with_context(|| format!("devices[{d}].channels[{c}]"))?;
            channels.push(Channel {
                device: d,
                id: channel.id,
                period: channel.period,
                range: channel.range,
                source,
                faults: FaultTracker::new(format!("{}/{}", device.id, channel.name)),
            });
        }
    }

    let topics = Topics::new(&config);
    // Small: a sealed frame is numbered but not durable until delivery has queued it.
    let (frames_tx, frames_rx) = mpsc::channel::<Outbound>(8);
    let (health_tx, mut health_rx) = watch::channel(Health::default());
    let missed_ticks = Arc::new(AtomicU64::new(0));
    let delivery = Delivery::new(config.clone(), boot_hex, queue, missed_ticks.clone())?;
    let delivery = tokio::spawn(delivery.run(frames_rx, health_tx, grace));

    let sampler = Sampler {
        channels,
        batchers,
        topics,
        frames: frames_tx,
        missed_ticks,
    };
    // Dropping `stop_tx` (on shutdown, or if this future is dropped) stops the sampler.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, mut done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("sampler".to_owned())
        .spawn(move || {
            let _ = done_tx.send(sampler.run(&stop_rx));
        })
        .context("starting the sampling thread")?;
    tokio::pin!(shutdown);
    // The sampler ends by itself only when delivery has stopped (its error is below).
    let finished = tokio::select! {
        _ = &mut shutdown => None,
        sealed = &mut done_rx => Some(sealed),
    };
    drop(stop_tx);
    let sealed = match finished {
        Some(sealed) => sealed,
        None => done_rx.await,
    };
    // Delivery first, whatever became of the sampler: it drains and syncs the queue, and
    // its error, if any, is why the sampler stopped.
    delivery.await.context("delivery task")??;
    let sealed = sealed.context("the sampling thread panicked")?;
    let health = health_rx.borrow_and_update().clone();
    Ok(RunReport {
        boot_id,
        sealed,
        health,
    })
}

/// How often a warning about missed ticks may be logged; each one carries the count.
const MISSED_TICKS_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Everything sampling needs, moved onto its own thread.
///
/// Sampling runs on a thread of its own, not on the runtime, because delivery blocks the
/// runtime for as long as the queue's fsyncs take (up to four per `DiskQueue::sync`, and
/// one when a segment is sealed; seconds on a slow SD card), and a timer on the same
/// thread cannot fire meanwhile. The queue keeps its synchronous, ordered durability work
/// exactly as it is; sampling only hands frames over through the bounded channel, and
/// waits only when delivery has fallen more than that channel behind. Ticks that pass
/// while it waits (or while the machine does not schedule it) are counted as missed.
struct Sampler {
    channels: Vec<Channel>,
    batchers: Vec<Batcher>,
    topics: Topics,
    frames: mpsc::Sender<Outbound>,
    missed_ticks: Arc<AtomicU64>,
}

impl Sampler {
    /// Samples until `stop` fires or is dropped, or delivery stops; then seals every open
    /// batch and returns how many readings each device sealed.
    fn run(mut self, stop: &std::sync::mpsc::Receiver<()>) -> Vec<(String, u64)> {
        let started = Instant::now();
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = (0..self.channels.len())
            .map(|i| Reverse((started, i)))
            .collect();
        let mut missed_log = MissedTicksLog::default();
        'sampling: loop {
            let next_sample = due.peek().map(|Reverse((at, _))| *at);
            let next_seal = self.batchers.iter().filter_map(Batcher::deadline).min();
            let wake = [next_sample, next_seal]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            match stop.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            let mut sealed = Vec::new();
            while let Some(&Reverse((at, i))) = due.peek() {
                if at > now {
                    break;
                }
                due.pop();
                let channel = &mut self.channels[i];
                let elapsed = now - started;
                if let Some(mut sample) =
                    sensors::sample_or_fault(channel.source.as_mut(), elapsed, &mut channel.faults)
                {
                    if let Some([low, high]) = channel.range {
                        sample = sensors::flag_out_of_range(sample, low as f32, high as f32);
                    }
                    let ts_ms = service::clock::now_ms();
                    sealed
                        .extend(self.batchers[channel.device].push(ts_ms, channel.id, sample, now));
                }
                let (next, missed) = next_tick(at, now, channel.period);
                missed_log.add(missed, now, &self.missed_ticks);
                due.push(Reverse((next, i)));
            }
            let synced = clock::synchronized();
            for batcher in &mut self.batchers {
                sealed.extend(batcher.seal_if_due(now, synced));
            }
            for frame in sealed {
                if !send(&self.frames, &self.topics, frame) {
                    break 'sampling;
                }
            }
        }

        info!("shutting down: sealing open batches");
        let synced = clock::synchronized();
        for batcher in &mut self.batchers {
            if let Some(frame) = batcher.seal(synced) {
                send(&self.frames, &self.topics, frame);
            }
        }
        self.batchers
            .iter()
            .map(|b| (b.device().to_string(), b.next_seq()))
            .collect()
    }
}

/// The tick after `at` that is still ahead of `now`, and how many ticks in between were
/// missed (their time passed without a reading). The schedule keeps its phase; after a
/// stall it skips ahead instead of bursting.
fn next_tick(at: Instant, now: Instant, period: Duration) -> (Instant, u64) {
    // Periods are at least 10 ms (validated); max(1) only keeps the division total.
    let period = period.as_nanos().max(1);
    let behind = now.saturating_duration_since(at).as_nanos();
    let missed = u64::try_from(behind / period).unwrap_or(u64::MAX);
    let to_next = u64::try_from(period - behind % period).unwrap_or(u64::MAX);
    (now + Duration::from_nanos(to_next), missed)
}

/// Counts missed ticks for the health report and warns about them at most once per
/// [`MISSED_TICKS_LOG_INTERVAL`], with the count since the last warning.
#[derive(Default)]
struct MissedTicksLog {
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl MissedTicksLog {
    fn add(&mut self, missed: u64, now: Instant, total: &AtomicU64) {
        if missed == 0 {
            return;
        }
        let total = total.fetch_add(missed, Ordering::Relaxed) + missed;
        self.unlogged += missed;
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= MISSED_TICKS_LOG_INTERVAL)
        {
            warn!(
                missed = self.unlogged,
                missed_total = total,
                "sampling ticks missed: the agent could not sample on time (delivery more \
                 than 8 frames behind, e.g. a slow disk, or an overloaded machine)"
            );
            self.unlogged = 0;
            self.logged_at = Some(now);
        }
    }
}

/// Hands a sealed frame to delivery, waiting while the channel is full; false if
/// delivery has stopped, which ends the run (its error is returned) rather than sampling
/// on into the void.
fn send(frames: &mpsc::Sender<Outbound>, topics: &Topics, frame: Frame) -> bool {
    let mut buf = [0u8; MAX_FRAME_LEN];
    match frame.encode(&mut buf) {
        Ok(bytes) => {
            let outbound = Outbound {
                topic: topics.telemetry(&frame.device),
                frame: bytes.to_vec(),
                readings: frame.readings.len(),
            };
            frames.blocking_send(outbound).is_ok()
        }
        Err(e) => {
            // Unreachable: the batcher only seals valid frames.
            error!(error = %e, device = %frame.device, "frame failed to encode");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_tick_keeps_the_phase_and_counts_every_tick_skipped() {
        let at = Instant::now();
        let ms = Duration::from_millis;
        // On time, or late within the period: nothing missed.
        assert_eq!(next_tick(at, at, ms(10)), (at + ms(10), 0));
        assert_eq!(next_tick(at, at + ms(7), ms(10)), (at + ms(10), 0));
        // The ticks at +10 and +20 passed while the one at +0 waited.
        assert_eq!(next_tick(at, at + ms(27), ms(10)), (at + ms(30), 2));
        // A tick due exactly now is one of those missed: the reading taken now is the
        // late one's.
        assert_eq!(next_tick(at, at + ms(30), ms(10)), (at + ms(40), 3));
        // A clock that stands still (or a `now` before `at`) misses nothing.
        assert_eq!(next_tick(at + ms(5), at, ms(10)), (at + ms(10), 0));
    }
}
