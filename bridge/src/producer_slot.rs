//! The forwarder's producer, and when to replace it by a new one.
//!
//! Two producer failures are not about a record and need no supervisor: an idempotent
//! producer whose broker forgot it (an unknown producer id, a sequence out of order, a
//! fatal state), and one that confirms nothing while Kafka is connected (wedged, see
//! `WedgeWatch`). For both the slot makes a new producer from the factory and purges the
//! old one, whose messages then come back to the forwarder to be offered to the new one.
//! Until every one of them is back the old producer is "retiring", and the forwarder
//! takes no new message, so acknowledgements stay in arrival order. Replacements are at
//! least `MIN_REPLACE_INTERVAL` apart, so a broker that refuses every new producer
//! costs one per interval, not a busy loop.

use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer as _, PurgeConfig};
use tracing::{error, warn};

use crate::kafka::{Producer, ProducerFactory};

const MIN_REPLACE_INTERVAL: Duration = Duration::from_secs(5);

pub struct ProducerSlot {
    current: Producer,
    factory: ProducerFactory,
    wedge: WedgeWatch,
    /// Kafka confirmed a message since the last look.
    confirmed: bool,
    /// The replaced producer, and how many of its messages are still to come back.
    retiring: Option<(Producer, usize)>,
    /// Why the producer is to be replaced as soon as `MIN_REPLACE_INTERVAL` allows.
    wanted: Option<String>,
    last_replaced: Option<Instant>,
}

impl ProducerSlot {
    /// Makes the first producer. One that confirms nothing for `replace_wedged_after`
    /// while Kafka is connected and messages wait is replaced.
    pub fn new(
        factory: ProducerFactory,
        replace_wedged_after: Duration,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            current: factory.create()?,
            factory,
            wedge: WedgeWatch::new(replace_wedged_after, Instant::now()),
            confirmed: false,
            retiring: None,
            wanted: None,
            last_replaced: None,
        })
    }

    /// The producer new messages go to.
    pub fn producer(&self) -> &Producer {
        &self.current
    }

    /// True while the producer is to be replaced: no message is to be offered to it.
    pub fn replacement_wanted(&self) -> bool {
        self.wanted.is_some()
    }

    /// True while messages of a replaced producer are still to come back.
    pub fn retiring(&self) -> bool {
        self.retiring.is_some()
    }

    /// Asks for a replacement (the first reason asked for is the one logged).
    pub fn want_replacement(&mut self, why: impl FnOnce() -> String) {
        self.wanted.get_or_insert_with(why);
    }

    /// A message came back settled: confirmed by Kafka or not. Returns true when it was
    /// one of the retiring producer's (they come back first, being first in line).
    pub fn settled(&mut self, confirmed: bool) -> bool {
        self.confirmed |= confirmed;
        let Some((_, left)) = &mut self.retiring else {
            return false;
        };
        *left = left.saturating_sub(1);
        if *left == 0 {
            if let Some((retired, _)) = self.retiring.take() {
                // Destroying a client joins its threads: not on the runtime's.
                tokio::task::spawn_blocking(move || drop(retired));
            }
        }
        true
    }

    /// Takes a look (every second or so): asks for a replacement when the producer is
    /// wedged. `in_flight`: messages given to producers and not yet back.
    pub fn look(&mut self, in_flight: usize, kafka_up: bool) {
        let confirmed = std::mem::take(&mut self.confirmed);
        let waiting = in_flight > 0 && self.retiring.is_none();
        if self
            .wedge
            .wedged(waiting, confirmed, kafka_up, Instant::now())
        {
            self.want_replacement(|| {
                "Kafka is connected but confirmed none of the messages waiting (a broker \
                 that lost its state does this)"
                    .to_owned()
            });
        }
    }

    /// Replaces the producer if that is wanted and allowed now: the new one takes over
    /// at once, and the old one's `in_flight` messages come back purged. Returns true
    /// when it did.
    pub fn replace_if_due(&mut self, in_flight: usize) -> bool {
        if self.retiring.is_some()
            || self
                .last_replaced
                .is_some_and(|at| at.elapsed() < MIN_REPLACE_INTERVAL)
        {
            return false;
        }
        let Some(why) = self.wanted.take() else {
            return false;
        };
        let replacement = match self.factory.create() {
            Ok(producer) => producer,
            Err(e) => {
                error!(
                    "the Kafka producer must be replaced ({why}) and a new one cannot be made: {e}"
                );
                self.wanted = Some(why);
                return false;
            }
        };
        warn!(
            in_flight,
            "replacing the Kafka producer and sending what it held again: {why}"
        );
        self.last_replaced = Some(Instant::now());
        let old = std::mem::replace(&mut self.current, replacement);
        old.purge(PurgeConfig::default().queue().inflight());
        if in_flight == 0 {
            tokio::task::spawn_blocking(move || drop(old));
        } else {
            self.retiring = Some((old, in_flight));
        }
        true
    }
}

/// When the producer is wedged.
///
/// A producer can stop confirming anything while its broker looks connected: Tansu
/// restarted without its storage forgets the idempotent producer's id and never says
/// so, and librdkafka then waits for ever (`message.timeout.ms = 0`). Only a new producer
/// gets past that. Wedged means: messages waited, none was confirmed, and Kafka was
/// connected, all along for `replace_after`. A Kafka that is away is not a wedge (a new
/// producer would wait just the same), so the clock starts again whenever it returns.

#[derive(Debug)]
struct WedgeWatch {
    replace_after: Duration,
    still_since: Instant,
}

impl WedgeWatch {
    fn new(replace_after: Duration, now: Instant) -> Self {
        Self {
            replace_after,
            still_since: now,
        }
    }

    /// Takes a look (every second or so). `confirmed`: Kafka confirmed a message since
    /// the last look. True when the producer is wedged; the clock then starts again, so
    /// the next replacement is at least `replace_after` later.
    fn wedged(&mut self, waiting: bool, confirmed: bool, kafka_up: bool, now: Instant) -> bool {
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
