//! Liveness and readiness of the bridge, served with the metrics by
//! `service::http::serve`.
//!
//! Ready means both sides are connected: subscribed on the MQTT broker (or the embedded
//! broker listening) and at least one Kafka broker up, and messages that wait are being
//! confirmed by Kafka. A load balancer or Kubernetes then sends nothing to, and alerts
//! on, a bridge that cannot forward, including one whose producer is stuck behind a
//! connected broker (an idempotent producer whose broker lost its state is one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use service::http::Readiness;
use service::readiness::{Flag, StallWatch};

#[derive(Debug)]
pub struct BridgeReadiness {
    mqtt: Flag,
    kafka: Flag,
    /// Kafka's confirmations as last seen: a change is progress.
    produced: AtomicU64,
    stall: StallWatch,
}

impl BridgeReadiness {
    /// Not ready once messages in flight have had none confirmed by Kafka for
    /// `stall_after` (`forward.stall_after`).
    pub fn new(stall_after: Duration) -> Self {
        Self {
            mqtt: Flag::default(),
            kafka: Flag::default(),
            produced: AtomicU64::new(0),
            stall: StallWatch::new(stall_after, Instant::now()),
        }
    }

    pub fn set_mqtt(&self, up: bool) {
        self.mqtt.set(up);
    }

    /// Returns the previous state, so callers log only the transitions.
    pub fn set_kafka(&self, up: bool) -> bool {
        self.kafka.set(up)
    }

    pub fn mqtt(&self) -> bool {
        self.mqtt.get()
    }

    pub fn kafka(&self) -> bool {
        self.kafka.get()
    }

    pub fn ready(&self) -> bool {
        self.mqtt() && self.kafka()
    }

    /// Takes a look at the forwarder's counters (every second, from the app).
    pub fn observe(&self, in_flight: u64, produced: u64, now: Instant) {
        if self.produced.swap(produced, Ordering::Relaxed) != produced {
            self.stall.progressed(now);
        }
        self.stall.set_waiting(in_flight, now);
    }

    /// Why the bridge is not making progress, if it is not.
    pub fn stall(&self, now: Instant) -> Option<String> {
        self.stall.stall(now).map(|stall| {
            format!(
                "{} messages wait for Kafka and none was confirmed for {} s (Kafka \
                 unreachable, or a producer stuck behind a connected broker, which the \
                 bridge replaces after twice this time)",
                stall.waiting,
                stall.still.as_secs()
            )
        })
    }
}

impl Readiness for BridgeReadiness {
    fn checks(&self) -> Vec<(&'static str, bool)> {
        vec![("mqtt", self.mqtt()), ("kafka", self.kafka())]
    }

    fn problems(&self) -> Vec<String> {
        self.stall(Instant::now()).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL_AFTER: Duration = Duration::from_secs(30);

    #[test]
    fn waiting_messages_that_kafka_never_confirms_are_a_stall() {
        let readiness = BridgeReadiness::new(STALL_AFTER);
        let t0 = Instant::now();
        readiness.observe(10, 5, t0);
        readiness.observe(10, 5, t0 + STALL_AFTER / 2);
        assert_eq!(readiness.stall(t0 + STALL_AFTER / 2), None);
        readiness.observe(10, 5, t0 + STALL_AFTER);
        let stall = readiness.stall(t0 + STALL_AFTER).unwrap();
        assert!(stall.starts_with("10 messages wait"), "{stall}");
        // A confirmation, or nothing waiting, is progress.
        readiness.observe(10, 6, t0 + STALL_AFTER);
        assert_eq!(
            readiness.stall(t0 + STALL_AFTER * 2 - Duration::from_secs(1)),
            None
        );
        readiness.observe(0, 6, t0 + STALL_AFTER * 3);
        assert_eq!(readiness.stall(t0 + STALL_AFTER * 4), None);
    }
}
