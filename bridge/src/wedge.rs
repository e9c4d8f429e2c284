//! When the producer is wedged, so that the forwarder replaces it.
//!
//! A producer can stop confirming anything while its broker looks connected: Tansu
//! restarted without its storage forgets the idempotent producer's id and never says
//! so, and librdkafka then waits for ever (`message.timeout.ms = 0`). Only a new producer
//! gets past that. Wedged means: messages waited, none was confirmed, and Kafka was
//! connected, all along for `replace_after`. A Kafka that is away is not a wedge (a new
//! producer would wait just the same), so the clock starts again whenever it returns.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct WedgeWatch {
    replace_after: Duration,
    still_since: Instant,
}

impl WedgeWatch {
    pub fn new(replace_after: Duration, now: Instant) -> Self {
        Self {
            replace_after,
            still_since: now,
        }
    }

    /// Takes a look (every second or so). `confirmed`: Kafka confirmed a message since
    /// the last look. True when the producer is wedged; the clock then starts again, so
    /// the next replacement is at least `replace_after` later.
    pub fn wedged(&mut self, waiting: bool, confirmed: bool, kafka_up: bool, now: Instant) -> bool {
        if !waiting || confirmed || !kafka_up {
            self.still_since = now;
            return false;
        }
        if now.duration_since(self.still_since) < self.replace_after {
            return false;
        }
        self.still_since = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(60);

    #[test]
    fn only_a_connected_producer_that_confirms_nothing_for_the_whole_time_is_wedged() {
        let t0 = Instant::now();
        let mut watch = WedgeWatch::new(AFTER, t0);
        assert!(!watch.wedged(true, false, true, t0 + AFTER / 2));
        assert!(watch.wedged(true, false, true, t0 + AFTER));
        // Replaced: the next one needs the whole time again.
        assert!(!watch.wedged(true, false, true, t0 + AFTER + AFTER / 2));
        assert!(watch.wedged(true, false, true, t0 + AFTER * 2));
    }

    #[test]
    fn a_confirmation_an_empty_window_or_kafka_away_start_the_clock_again() {
        let t0 = Instant::now();
        for (waiting, confirmed, kafka_up) in [
            (true, true, true),
            (false, false, true),
            (true, false, false),
        ] {
            let mut watch = WedgeWatch::new(AFTER, t0);
            assert!(!watch.wedged(waiting, confirmed, kafka_up, t0 + AFTER));
            assert!(
                !watch.wedged(true, false, true, t0 + AFTER + AFTER / 2),
                "{waiting} {confirmed} {kafka_up}"
            );
            assert!(watch.wedged(true, false, true, t0 + AFTER * 2));
        }
    }
}
