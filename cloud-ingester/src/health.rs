//! Readiness of the ingester, served with the metrics by `service::http::serve`.
//!
//! Ready means it can ingest: a Kafka broker is up and the last PostgreSQL write
//! succeeded. A load balancer or Kubernetes then alerts on an instance that cannot
//! store, instead of taking its silence for a quiet plant.

use std::sync::atomic::{AtomicBool, Ordering};

use service::http::Readiness;

#[derive(Debug, Default)]
pub struct Health {
    kafka: AtomicBool,
    postgres: AtomicBool,
}

impl Health {
    /// Returns the previous state, so callers log only the transitions.
    pub fn set_kafka(&self, up: bool) -> bool {
        self.kafka.swap(up, Ordering::Relaxed)
    }

    /// Returns the previous state, so callers log only the transitions.
    pub fn set_postgres(&self, up: bool) -> bool {
        self.postgres.swap(up, Ordering::Relaxed)
    }

    pub fn kafka(&self) -> bool {
        self.kafka.load(Ordering::Relaxed)
    }

    pub fn postgres(&self) -> bool {
        self.postgres.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.kafka() && self.postgres()
    }
}

impl Readiness for Health {
    fn checks(&self) -> Vec<(&'static str, bool)> {
        vec![("kafka", self.kafka()), ("postgresql", self.postgres())]
    }
}
