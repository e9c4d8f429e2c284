//! The throttled, retained, human-readable `latest` message per device, so a person
//! browsing the broker (MQTT Explorer) sees live values while telemetry stays binary.
//!
//! At most one message per device per interval: the first frame after a quiet interval
//! goes out at once, later ones wait and the newest of them goes out when the interval
//! has passed. The device table is capped; devices beyond it are counted, not tracked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::AsyncClient;

use crate::inbound::{Ack, Inbound};
use crate::inspect::{latest_json, latest_topic, Accepted};
use crate::stats::Stats;
use protocol::BootId;

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

#[derive(Default)]
struct Slot {
    /// Boot and last sequence number of the newest frame seen.
    newest: Option<(BootId, u64)>,
    last_sent: Option<Instant>,
    waiting: Option<Newest>,
}

pub struct Latest {
    interval: Duration,
    max_devices: usize,
    slots: HashMap<String, Slot>,
    sink: LatestSink,
    stats: Arc<Stats>,
}

impl Latest {
    pub fn new(
        interval: Duration,
        max_devices: usize,
        sink: LatestSink,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            interval,
            max_devices,
            slots: HashMap::new(),
            sink,
            stats,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A valid frame arrived. Replays and stragglers (a frame of the same boot no newer
    /// than one already seen) are ignored, so the retained value never goes back.
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
        let position = (frame.boot_id, frame.last_seq);
        if slot
            .newest
            .is_some_and(|(boot, seq)| boot == position.0 && seq >= position.1)
        {
            return;
        }
        slot.newest = Some(position);
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
        publish(&mut self.sink, &self.stats, newest).await;
    }

    /// Sends what waited for its device's interval to pass.
    pub async fn flush_due(&mut self, now: Instant) {
        let mut due = Vec::new();
        for slot in self.slots.values_mut() {
            if slot.waiting.is_some()
                && slot
                    .last_sent
                    .is_none_or(|sent| now.duration_since(sent) >= self.interval)
            {
                slot.last_sent = Some(now);
                due.extend(slot.waiting.take());
            }
        }
        for newest in due {
            publish(&mut self.sink, &self.stats, newest).await;
        }
    }
}

async fn publish(sink: &mut LatestSink, stats: &Stats, newest: Newest) {
    let (Some(topic), Some(json)) = (
        latest_topic(&newest.topic),
        latest_json(&newest.payload, newest.received_at_ms),
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
