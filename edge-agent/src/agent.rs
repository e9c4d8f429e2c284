//! The running agent: samples every channel on its own period, batches each device's
//! readings into frames, and hands them to [`Delivery`] through the disk queue.
//!
//! One task samples all devices (a timer heap, not a task per channel) and one task
//! delivers; with a current-thread runtime that keeps the whole agent small enough for
//! the Pi's memory bar. Shutdown is ordered: stop sampling, seal every open batch, let
//! delivery drain within a grace period, publish `offline`, sync the queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use protocol::{BootId, DeviceId, Frame, MAX_FRAME_LEN};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info};

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
    let delivery = Delivery::new(config.clone(), boot_hex, queue)?;
    let delivery = tokio::spawn(delivery.run(frames_rx, health_tx, grace));

    let started = Instant::now();
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> =
        (0..channels.len()).map(|i| Reverse((started, i))).collect();
    tokio::pin!(shutdown);
    'sampling: loop {
        let next_sample = due.peek().map(|Reverse((at, _))| *at);
        let next_seal = batchers.iter().filter_map(Batcher::deadline).min();
        let wake = [next_sample, next_seal.map(Instant::from_std)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        let mut sealed = Vec::new();
        while let Some(&Reverse((at, i))) = due.peek() {
            if at > now {
                break;
            }
            due.pop();
            let channel = &mut channels[i];
            let elapsed = now - started;
            if let Some(mut sample) =
                sensors::sample_or_fault(channel.source.as_mut(), elapsed, &mut channel.faults)
            {
                if let Some([low, high]) = channel.range {
                    sample = sensors::flag_out_of_range(sample, low as f32, high as f32);
                }
                let ts_ms = clock::now_ms();
                sealed.extend(batchers[channel.device].push(
                    ts_ms,
                    channel.id,
                    sample,
                    now.into_std(),
                ));
            }
            // The next tick keeps the schedule; after a stall, skip ahead instead of bursting.
            let mut next = at + channel.period;
            if next <= now {
                next = now + channel.period;
            }
            due.push(Reverse((next, i)));
        }
        let synced = clock::synchronized();
        for batcher in &mut batchers {
            sealed.extend(batcher.seal_if_due(now.into_std(), synced));
        }
        for frame in sealed {
            if !send(&frames_tx, &topics, frame).await {
                break 'sampling;
            }
        }
    }

    info!("shutting down: sealing open batches");
    let synced = clock::synchronized();
    for batcher in &mut batchers {
        if let Some(frame) = batcher.seal(synced) {
            send(&frames_tx, &topics, frame).await;
        }
    }
    drop(frames_tx);
    delivery.await.context("delivery task")??;
    let health = health_rx.borrow_and_update().clone();
    Ok(RunReport {
        boot_id,
        sealed: batchers
            .iter()
            .map(|b| (b.device().to_string(), b.next_seq()))
            .collect(),
        health,
    })
}

/// Hands a sealed frame to delivery; false if delivery has stopped, which ends the run
/// (its error is returned) rather than sampling on into the void.
async fn send(frames: &mpsc::Sender<Outbound>, topics: &Topics, frame: Frame) -> bool {
    let mut buf = [0u8; MAX_FRAME_LEN];
    match frame.encode(&mut buf) {
        Ok(bytes) => {
            let outbound = Outbound {
                topic: topics.telemetry(&frame.device),
                frame: bytes.to_vec(),
                readings: frame.readings.len(),
            };
            frames.send(outbound).await.is_ok()
        }
        Err(e) => {
            // Unreachable: the batcher only seals valid frames.
            error!(error = %e, device = %frame.device, "frame failed to encode");
            true
        }
    }
}
