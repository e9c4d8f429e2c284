//! Readiness of the ingester, served with the metrics by `service::http::serve`.
//!
//! Ready means it is ingesting, or could: a Kafka broker is up, the last PostgreSQL
//! write succeeded, and no partition it holds has records waiting while its stored
//! offset has not moved for [`STALL_AFTER`]. A load balancer or Kubernetes then alerts
//! on an instance that cannot store, or does not, instead of taking its silence for a
//! quiet plant. The stall is judged when `/readyz` is asked, so a loop that is itself
//! stuck cannot keep reporting ready.

use std::time::{Duration, Instant};

use service::http::Readiness;
use service::readiness::{Flag, StallWatch};

/// How long records may wait on a held partition without its offset moving before the
/// instance is not ready (and the pipeline re-reads its partitions from their offsets).
pub const STALL_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct IngesterReadiness {
    kafka: Flag,
    postgres: Flag,
    /// Records in the held partitions beyond the stored offsets, moved by commits.
    stall: StallWatch,
}

impl Default for IngesterReadiness {
    fn default() -> Self {
        Self {
            kafka: Flag::default(),
            postgres: Flag::default(),
            stall: StallWatch::new(STALL_AFTER, Instant::now()),
        }
    }
}

impl IngesterReadiness {
    /// Returns the previous state, so callers log only the transitions.
    pub fn set_kafka(&self, up: bool) -> bool {
        self.kafka.set(up)
    }

    /// Returns the previous state, so callers log only the transitions.
    pub fn set_postgres(&self, up: bool) -> bool {
        self.postgres.set(up)
    }

    pub fn kafka(&self) -> bool {
        self.kafka.get()
    }

    pub fn postgres(&self) -> bool {
        self.postgres.get()
    }

    /// A batch's offsets were committed.
    pub fn progressed(&self) {
        self.stall.progressed(Instant::now());
    }

    /// How many records wait in the held partitions beyond their stored offsets.
    pub fn set_waiting(&self, waiting: u64) {
        self.stall.set_waiting(waiting, Instant::now());
    }

    /// Why the instance is stalled, if it is: records wait and nothing was committed for
    /// [`STALL_AFTER`].
    pub fn stall(&self) -> Option<String> {
        self.stall.stall(Instant::now()).map(|stall| {
            format!(
                "{} records wait in the partitions this instance holds and nothing was stored \
                 for {} s",
                stall.waiting,
                stall.still.as_secs()
            )
        })
    }

    pub fn ready(&self) -> bool {
        self.kafka() && self.postgres() && self.stall().is_none()
    }
}

impl Readiness for IngesterReadiness {
    fn checks(&self) -> Vec<(&'static str, bool)> {
        vec![("kafka", self.kafka()), ("postgresql", self.postgres())]
    }

    fn problems(&self) -> Vec<String> {
        self.stall().into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_records_with_no_commit_for_long_enough_make_it_not_ready() {
        let readiness = IngesterReadiness::default();
        readiness.set_kafka(true);
        readiness.set_postgres(true);
        readiness.set_waiting(500);
        assert!(readiness.ready(), "a fresh backlog is not a stall");
        readiness.stall.progressed(Instant::now() - STALL_AFTER);
        let stall = readiness.stall().expect("stalled");
        assert!(stall.starts_with("500 records wait"), "{stall}");
        assert!(!readiness.ready());
        assert_eq!(readiness.problems().len(), 1);
        readiness.progressed();
        assert!(readiness.ready(), "a commit ends the stall");
        readiness.stall.progressed(Instant::now() - STALL_AFTER);
        readiness.set_waiting(0);
        assert!(readiness.ready(), "nothing waiting is never a stall");
    }
}
