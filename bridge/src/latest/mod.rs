//! The throttled, retained, human-readable `latest` message per device, so a person
//! browsing the broker (MQTT Explorer) sees live values while telemetry stays binary.
//! Its JSON (channel names and units from the device's `meta`, see `crate::meta`) is
//! described at `json::latest_json`.
//!
//! It never goes back, and no device clock can pin it (the pipeline's clock policy,
//! `service::clock`):
//!
//! - **Identity orders.** Within a boot the frame's last sequence number decides: a
//!   replay or a straggler is ignored. Across boots the boot first seen later is newer
//!   (`crate::boots`): an agent that restarts sends its new boot's live frames first and
//!   its old boot's backlog after them, and that backlog never replaces the new boot's
//!   values. The order lives in memory, so after a bridge restart the first boot seen
//!   wins until a frame of another boot arrives.
//! - **A wrong clock is not shown.** A frame newer by identity whose last reading is
//!   dated more than `clock.max_ahead` ahead of the bridge's clock (when it received the
//!   frame) still goes to Kafka, and counts as seen in that order, but is not published
//!   here (`bridge_latest_future_dated_total`): one frame dated tomorrow would otherwise
//!   stand as the newest value, and the frames after it, correctly dated, follow at once.
//!
//! At most one message per device per interval: the first frame after a quiet interval
//! goes out at once, later ones wait and the newest of them goes out when the interval
//! has passed. The device table is capped; devices beyond it are counted, not tracked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::AsyncClient;

use crate::boots::{Boots, Order};
use crate::config::LatestConfig;
use crate::inbound::{Ack, Inbound};
use crate::meta::Metas;
use crate::stats::Stats;
use crate::validate::Accepted;

pub mod json;

use json::{latest_json, latest_topic};

/// Where `latest` messages are published.
pub enum LatestSink {
    /// Through the client connection of the most recent message (client mode).
    Client(Option<AsyncClient>),
    /// Into the embedded broker through an in-process link.
    Embedded(rumqttd::local::LinkTx),
}

struct Newest {
    topic: Bytes,
    payload: Bytes,
    received_at_ms: u64,
}

/// Where a device stands: its boots, and the last sequence number seen of the newest.
struct Position {
    boots: Boots,
    last_seq: u64,
}

/// What a valid frame is to its device's `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The newest seen: it is shown.
    Newest,
    /// A replay, a straggler of its boot, or of a boot replaced since: ignored.
    Old,
    /// Newer by identity, but dated beyond `max_ahead` of `now_ms`: not shown.
    FutureDated,
}

/// Judges `frame`, received at `now_ms` by the bridge's clock, against the device's
/// `position`, and moves the position when the frame is newer by identity (whatever its
/// date: identity orders, the clock only decides what is shown).
fn judge(
    position: &mut Option<Position>,
    frame: &Accepted,
    now_ms: u64,
    max_ahead: Duration,
) -> Verdict {
    let newer = match position {
        None => {
            *position = Some(Position {
                boots: Boots::new(frame.boot_id),
                last_seq: frame.last_seq,
            });
            true
        }
        Some(position) => match position.boots.see(frame.boot_id) {
            Order::Replaced => false,
            Order::Current if frame.last_seq <= position.last_seq => false,
            Order::Current | Order::Newer => {
                position.last_seq = frame.last_seq;
                true
            }
        },
    };
    let as_ms = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
    if !newer {
        Verdict::Old
    } else if service::clock::is_future_dated(as_ms(frame.last_ts_ms), as_ms(now_ms), max_ahead) {
        Verdict::FutureDated
    } else {
        Verdict::Newest
    }
}

#[derive(Default)]
struct Slot {
    position: Option<Position>,
    last_sent: Option<Instant>,
    waiting: Option<Newest>,
}

pub struct Latest {
    interval: Duration,
    max_devices: usize,
    max_ahead: Duration,
    slots: HashMap<String, Slot>,
    sink: LatestSink,
    metas: Arc<Metas>,
    stats: Arc<Stats>,
}

impl Latest {
    /// `max_ahead` is `clock.max_ahead`; `metas` names the channels.
    pub fn new(
        config: &LatestConfig,
        max_ahead: Duration,
        sink: LatestSink,
        metas: Arc<Metas>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            interval: config.interval,
            max_devices: config.max_devices,
            max_ahead,
            slots: HashMap::new(),
            sink,
            metas,
            stats,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A valid frame arrived. Replays, stragglers and a replaced boot's frames are
    /// ignored, so the retained value never goes back; future-dated ones are counted and
    /// not shown.
    pub async fn offer(&mut self, frame: &Accepted, inbound: &Inbound, now: Instant) {
        let device = frame.device.as_str();
        if !self.slots.contains_key(device) && self.slots.len() >= self.max_devices {
            self.stats.latest_skipped();
            return;
        }
        // Look up before inserting: `entry` would allocate the key for every message.
        if !self.slots.contains_key(device) {
            self.slots.insert(device.to_owned(), Slot::default());
        }
        let Some(slot) = self.slots.get_mut(device) else {
            return;
        };
        match judge(
            &mut slot.position,
            frame,
            inbound.received_at_ms,
            self.max_ahead,
        ) {
            Verdict::Newest => {}
            Verdict::Old => return,
            Verdict::FutureDated => {
                self.stats.latest_future_dated();
                return;
            }
        }
        let newest = Newest {
            topic: inbound.topic.clone(),
            payload: inbound.payload.clone(),
            received_at_ms: inbound.received_at_ms,
        };
        if slot
            .last_sent
            .is_some_and(|sent| now.duration_since(sent) < self.interval)
        {
            slot.waiting = Some(newest);
            return;
        }
        slot.last_sent = Some(now);
        slot.waiting = None;
        if let (LatestSink::Client(current), Ack::Mqtt { client, .. }) =
            (&mut self.sink, &inbound.ack)
        {
            // Publish on the connection that is alive now.
            *current = Some(client.clone());
        }
        publish(&mut self.sink, &self.stats, &self.metas, device, newest).await;
    }

    /// Sends what waited for its device's interval to pass.
    pub async fn flush_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (device, slot) in &mut self.slots {
            if slot.waiting.is_some()
                && slot
                    .last_sent
                    .is_none_or(|sent| now.duration_since(sent) >= self.interval)
            {
                slot.last_sent = Some(now);
                if let Some(newest) = slot.waiting.take() {
                    due.push((device.clone(), newest));
                }
            }
        }
        for (device, newest) in due {
            publish(&mut self.sink, &self.stats, &self.metas, &device, newest).await;
        }
    }
}

async fn publish(
    sink: &mut LatestSink,
    stats: &Stats,
    metas: &Metas,
    device: &str,
    newest: Newest,
) {
    let labels = metas.labels(device);
    let (Some(topic), Some(json)) = (
        latest_topic(&newest.topic),
        latest_json(&newest.payload, newest.received_at_ms, labels.as_deref()),
    ) else {
        return;
    };
    let body = json.to_string();
    let sent = match sink {
        LatestSink::Client(Some(client)) => client
            .try_publish(topic, rumqttc::v5::mqttbytes::QoS::AtMostOnce, true, body)
            .is_ok(),
        LatestSink::Client(None) => false,
        LatestSink::Embedded(link) => {
            let publish =
                rumqttd::protocol::Publish::new(Bytes::from(topic), Bytes::from(body), true);
            // Despite `async`, this blocks briefly if rumqttd's router queue (1000 events)
            // is full; at most one message per device per second goes this way.
            link.send(rumqttd::protocol::Packet::Publish(publish, None))
                .await
                .is_ok()
        }
    };
    if sent {
        stats.latest_published();
    } else {
        stats.latest_skipped();
    }
}

#[cfg(test)]
mod tests {
    use protocol::BootId;

    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const MAX_AHEAD: Duration = service::clock::DEFAULT_MAX_AHEAD;

    fn frame(boot: u8, last_seq: u64, last_ts_ms: u64) -> Accepted {
        Accepted {
            device: "dev-a".to_owned(),
            boot_id: BootId([boot; 8]),
            last_seq,
            last_ts_ms,
        }
    }

    /// The verdicts on `frames`, in order, for one device.
    fn verdicts(frames: &[Accepted]) -> Vec<Verdict> {
        let mut position = None;
        frames
            .iter()
            .map(|frame| judge(&mut position, frame, NOW, MAX_AHEAD))
            .collect()
    }

    #[test]
    fn within_a_boot_the_sequence_number_orders_whatever_the_timestamps() {
        use Verdict::*;
        assert_eq!(
            verdicts(&[
                frame(1, 10, NOW),
                frame(1, 10, NOW),             // replay
                frame(1, 5, NOW + 1),          // straggler, though dated later
                frame(1, 20, NOW - 3_600_000), // clock stepped back: still newer
            ]),
            [Newest, Old, Old, Newest]
        );
    }

    #[test]
    fn an_old_boots_backlog_after_a_restart_never_replaces_the_new_boot() {
        use Verdict::*;
        assert_eq!(
            verdicts(&[
                frame(1, 5_000, NOW - 60_000),
                frame(2, 0, NOW), // the agent restarted: live frames first
                frame(1, 5_100, NOW - 50_000), // then the old boot's backlog
                frame(2, 1, NOW + 1_000),
                frame(1, 9_000, NOW - 1_000),
            ]),
            [Newest, Newest, Old, Newest, Old]
        );
    }

    #[test]
    fn a_frame_dated_beyond_max_ahead_is_not_shown_and_the_next_ones_are() {
        use Verdict::*;
        let hour = 3_600_000;
        let max_ahead_ms = MAX_AHEAD.as_millis() as u64;
        assert_eq!(
            verdicts(&[
                frame(1, 1, NOW + 23 * hour),
                frame(1, 2, NOW),
                frame(1, 3, NOW + max_ahead_ms), // at the bound: shown
                frame(1, 4, NOW + max_ahead_ms + 1),
                frame(1, 4, NOW), // taken as seen: its replay is old
                frame(1, 5, 0),   // a 1970 clock is not ahead
            ]),
            [FutureDated, Newest, Newest, FutureDated, Old, Newest]
        );
        // Timestamps beyond i64 do not wrap into the past.
        assert_eq!(verdicts(&[frame(1, 1, u64::MAX)]), [FutureDated]);
    }

    #[test]
    fn a_new_boot_dated_ahead_still_replaces_the_old_one_unshown() {
        use Verdict::*;
        let hour = 3_600_000;
        assert_eq!(
            verdicts(&[
                frame(1, 100, NOW - 60_000),
                frame(2, 0, NOW + 23 * hour), // restarted with a wrong clock
                frame(1, 101, NOW),           // the old boot's backlog
                frame(2, 1, NOW),             // the clock set right
            ]),
            [Newest, FutureDated, Old, Newest]
        );
    }
}
