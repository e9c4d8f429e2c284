//! Liveness and readiness of the bridge, served with the metrics by
//! `service::http::serve`.
//!
//! Ready means both sides are connected: subscribed on the MQTT broker (or the embedded
//! broker listening) and at least one Kafka broker up, and messages that wait are being
//! confirmed by Kafka. A load balancer or Kubernetes then sends nothing to, and alerts
//! on, a bridge that cannot forward, including one whose producer is stuck behind a
//! connected broker (an idempotent producer whose broker lost its state is one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use service::http::Readiness;

/// Messages in flight with none confirmed by Kafka for this long: not ready.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Health {
    mqtt: AtomicBool,
    kafka: AtomicBool,
    progress: Mutex<Option<Progress>>,
}

/// The last look at the forwarder: what was in flight, how many Kafka had confirmed,
/// and since when nothing has moved while something waited.
#[derive(Debug, Clone, Copy)]
struct Progress {
    in_flight: u64,
    produced: u64,
    moved: Instant,
}

impl Health {
    pub fn set_mqtt(&self, up: bool) {
        self.mqtt.store(up, Ordering::Relaxed);
    }

    /// Returns the previous state, so callers log only the transitions.
    pub fn set_kafka(&self, up: bool) -> bool {
        self.kafka.swap(up, Ordering::Relaxed)
    }

    pub fn mqtt(&self) -> bool {
        self.mqtt.load(Ordering::Relaxed)
    }

    pub fn kafka(&self) -> bool {
        self.kafka.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.mqtt() && self.kafka()
    }

    /// Takes a look at the forwarder's counters (every second, from the app).
    pub fn observe(&self, in_flight: u64, produced: u64, now: Instant) {
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        let moved = match *progress {
            Some(last) if in_flight > 0 && produced == last.produced => last.moved,
            _ => now,
        };
        *progress = Some(Progress {
            in_flight,
            produced,
            moved,
        });
    }

    /// Why the bridge is not making progress, if it is not.
    pub fn stall(&self, now: Instant) -> Option<String> {
        let progress = (*self.progress.lock().unwrap_or_else(PoisonError::into_inner))?;
        let still = now.saturating_duration_since(progress.moved);
        (progress.in_flight > 0 && still >= STALL_AFTER).then(|| {
            format!(
                "{} messages wait for Kafka and none was confirmed for {} s (a producer \
                 stuck behind a connected broker: restart the bridge; the agents resend \
                 what it held)",
                progress.in_flight,
                still.as_secs()
            )
        })
    }
}

impl Readiness for Health {
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

    #[test]
    fn waiting_messages_that_kafka_never_confirms_are_a_stall() {
        let health = Health::default();
        let t0 = Instant::now();
        health.observe(10, 5, t0);
        health.observe(10, 5, t0 + STALL_AFTER / 2);
        assert_eq!(health.stall(t0 + STALL_AFTER / 2), None);
        health.observe(10, 5, t0 + STALL_AFTER);
        let stall = health.stall(t0 + STALL_AFTER).unwrap();
        assert!(stall.starts_with("10 messages wait"), "{stall}");
        // A confirmation, or nothing waiting, is progress.
        health.observe(10, 6, t0 + STALL_AFTER);
        assert_eq!(
            health.stall(t0 + STALL_AFTER * 2 - Duration::from_secs(1)),
            None
        );
        health.observe(0, 6, t0 + STALL_AFTER * 3);
        assert_eq!(health.stall(t0 + STALL_AFTER * 4), None);
    }
}
