//! Liveness and readiness of the bridge, served with the metrics by
//! `service::http::serve`.
//!
//! Ready means both sides are connected: subscribed on the MQTT broker (or the embedded
//! broker listening) and at least one Kafka broker up. A load balancer or Kubernetes then sends
//! nothing to, and alerts on, a bridge that cannot forward.

use std::sync::atomic::{AtomicBool, Ordering};

use service::http::Readiness;

#[derive(Debug, Default)]
pub struct Health {
    mqtt: AtomicBool,
    kafka: AtomicBool,
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
}

impl Readiness for Health {
    fn checks(&self) -> Vec<(&'static str, bool)> {
        vec![("mqtt", self.mqtt()), ("kafka", self.kafka())]
    }
}
