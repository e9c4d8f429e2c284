//! The ledger of a scenario: every reading the agents produced held against what
//! PostgreSQL stored, plus the derived state that must agree with the rows (hourly
//! statistics, Redis latest values) and the dead letters. It is printed whole, so a
//! passing run shows its figures as plainly as a failing one.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result};

mod derived;
mod kafka;
mod rows;

use derived::{
    completeness_against_rows, redis_against_rows, reported_drops, stats_against_recount,
};
use kafka::{dead_letter_reasons, kafka_hop};

use crate::deployment::Finished;
pub use rows::Stored;

use crate::workload::{FRAME_READINGS, QUEUE_CAP_INFLIGHT};

/// What the design promises for a scenario's losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossPolicy {
    /// Covered by the design: nothing lost.
    None,
    /// The agents' queue reached its cap and dropped its oldest frames: every missing
    /// reading is one the agents reported dropping, and of those they reported as never
    /// acknowledged by the broker, at most one in-flight frame per gateway got through.
    /// A PUBACK does not hand a frame over (only a confirmation does), so a reading the
    /// broker had may be missing if the agents reported dropping it after its PUBACK.
    QueueCap,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub scenario: String,
    pub seed: u64,
    /// Readings the agents numbered and put on disk: for each boot, seqs 0 to the
    /// highest seen on the broker.
    pub produced: u64,
    pub boots: usize,
    /// How long the agents sampled: `produced` over it is the rate they made.
    pub sampled: Duration,
    /// Agent processes, each with its own in-flight window.
    pub gateways: u64,
    /// Distinct (device, boot, seq) in `sensor_readings`.
    pub stored: u64,
    /// Rows beyond the first for the same (device, boot, seq).
    pub duplicates: u64,
    /// Produced, not stored.
    pub lost: u64,
    /// Of the lost, those that never reached the broker (holes in a boot's seqs).
    pub unpublished: u64,
    /// Stored, never produced.
    pub unexpected: u64,
    /// Frames the agents' queues dropped at their cap, over their life.
    pub queue_dropped_frames: u64,
    /// Readings the agents reported giving up at the cap (their health's `dropped`):
    /// never acknowledged by the broker, and acknowledged but not yet confirmed.
    pub reported_unsent: u64,
    pub reported_after_puback: u64,
    /// Lost readings the agents did not report dropping.
    pub lost_unreported: u64,
    /// Readings reported as never acknowledged, stored all the same (a frame in flight
    /// when the broker went away, its PUBACK lost).
    pub reported_unsent_stored: u64,
    /// Lost readings the broker had (the observer saw them) that the agents reported as
    /// never acknowledged: in flight when the broker went away, the broker's copy lost.
    pub lost_seen_reported_unsent: u64,
    /// Frames the agents sent again because no confirmation covered them in time, by
    /// their last health reports (since each one's last start).
    pub resent_frames: u64,
    /// Frames still in the agents' queues after their clean stop.
    pub queue_left: u64,
    /// The pipeline's own completeness report (`iotctl completeness`), summed over
    /// boots: readings missing below each boot's highest stored, of those the ones the
    /// agents reported dropping and the rest, and readings that filled a hole.
    pub pipeline_missing: u64,
    pub pipeline_dropped_at_edge: u64,
    pub pipeline_unexplained: u64,
    pub pipeline_recovered: u64,
    /// Where that report disagrees with the rows, boot by boot.
    pub completeness_mismatches: Vec<String>,
    /// Distinct readings of the workload in `sensors-data`, every copy of them there
    /// (resends and replays included), and other records there.
    pub in_kafka: u64,
    pub kafka_copies: u64,
    pub foreign_in_kafka: u64,
    /// Records in `sensors-dlq`.
    pub dead_letters: u64,
    /// Dead letters the bridge and the ingester counted as confirmed by Kafka.
    pub confirmed_dead_letters: u64,
    /// The same, by their `dlq-reason` header.
    pub dead_letter_reasons: BTreeMap<String, u64>,
    /// Telemetry messages on the broker that were not the workload's frames.
    pub foreign_messages: u64,
    pub stats_groups: u64,
    pub stats_mismatches: Vec<String>,
    pub redis_channels: u64,
    pub redis_mismatches: Vec<String>,
    /// Each fault and how long after it ended fresh readings were committed again.
    pub recoveries: Vec<(String, Duration)>,
    /// Faults without a recovery to time (bad traffic), described.
    pub injected: Vec<String>,
}

impl Ledger {
    /// Holds PostgreSQL, Redis and Kafka against what was produced.
    pub async fn take(scenario: &str, seed: u64, finished: &Finished) -> Result<Self> {
        let deployment = &finished.deployment;
        let mut ledger = Ledger {
            scenario: scenario.to_owned(),
            seed,
            boots: finished.observed.seqs.len(),
            sampled: finished.sampled,
            gateways: deployment.workload.gateways().len() as u64,
            foreign_messages: finished.observed.foreign,
            queue_left: finished.queues.iter().map(|q| q.0).sum(),
            queue_dropped_frames: finished.queues.iter().map(|q| q.1).sum(),
            confirmed_dead_letters: finished.confirmed_dead_letters,
            ..Ledger::default()
        };

        let (stored, duplicates) = Stored::read(&deployment.db).await?;
        ledger.duplicates = duplicates;
        ledger.stored = stored.len();

        let mut produced = 0u64;
        for ((device, boot), seqs) in &finished.observed.seqs {
            let Some(&highest) = seqs.last() else {
                continue;
            };
            let have = stored.seqs(device, *boot);
            for seq in 0..=highest {
                produced += 1;
                if have.binary_search(&seq).is_err() {
                    ledger.lost += 1;
                    if !seqs.contains(&seq) {
                        ledger.unpublished += 1;
                    }
                }
            }
        }
        ledger.produced = produced;
        let reported = reported_drops(&finished.observed)?;
        ledger.resent_frames = finished
            .observed
            .health
            .values()
            .map(|h| h.resent_frames)
            .sum();
        for ((device, boot, seq), acknowledged) in &reported {
            match (acknowledged, stored.contains(device, *boot, *seq)) {
                (true, _) => ledger.reported_after_puback += 1,
                (false, true) => {
                    ledger.reported_unsent += 1;
                    ledger.reported_unsent_stored += 1;
                }
                (false, false) => {
                    ledger.reported_unsent += 1;
                    let seen = finished
                        .observed
                        .seqs
                        .get(&(device.clone(), *boot))
                        .is_some_and(|seqs| seqs.contains(seq));
                    ledger.lost_seen_reported_unsent += u64::from(seen);
                }
            }
        }
        for ((device, boot), seqs) in &finished.observed.seqs {
            let highest = seqs.last().copied().unwrap_or(0);
            let have = stored.seqs(device, *boot);
            ledger.lost_unreported += (0..=highest)
                .filter(|seq| {
                    have.binary_search(seq).is_err()
                        && !reported.contains_key(&(device.clone(), *boot, *seq))
                })
                .count() as u64;
        }
        for boot in &finished.completeness {
            ledger.pipeline_missing += boot.missing;
            ledger.pipeline_dropped_at_edge += boot.dropped_at_edge.unwrap_or(0);
            ledger.pipeline_unexplained += boot.unexplained.unwrap_or(boot.missing);
            ledger.pipeline_recovered += boot.recovered;
        }
        ledger.completeness_mismatches = completeness_against_rows(&stored, &finished.completeness);
        ledger.unexpected = stored
            .boots()
            .map(
                |(boot, seqs)| match finished.observed.seqs.get(boot).and_then(|s| s.last()) {
                    Some(highest) => seqs.iter().filter(|&seq| seq > highest).count() as u64,
                    None => seqs.len() as u64,
                },
            )
            .sum();

        (ledger.stats_groups, ledger.stats_mismatches) =
            stats_against_recount(&deployment.db).await?;
        (ledger.redis_channels, ledger.redis_mismatches) =
            redis_against_rows(&deployment.db, &deployment.redis.url()).await?;
        let brokers = deployment.kafka.brokers();
        let (reasons, hop) = tokio::task::spawn_blocking(move || {
            Ok::<_, anyhow::Error>((dead_letter_reasons(&brokers)?, kafka_hop(&brokers)?))
        })
        .await
        .context("reading Kafka")??;
        ledger.dead_letter_reasons = reasons;
        (
            ledger.in_kafka,
            ledger.kafka_copies,
            ledger.foreign_in_kafka,
        ) = hop;
        ledger.dead_letters = ledger.dead_letter_reasons.values().sum();
        Ok(ledger)
    }

    /// The design's promise for this scenario, checked: every breach, named.
    pub fn breaches(&self, policy: LossPolicy, expected_dead_letters: u64) -> Vec<String> {
        let mut breaches = Vec::new();
        let mut expect = |ok: bool, what: String| {
            if !ok {
                breaches.push(what);
            }
        };
        expect(self.produced > 0, "nothing was produced".into());
        expect(
            self.duplicates == 0,
            format!("{} duplicate rows", self.duplicates),
        );
        expect(
            self.unexpected == 0,
            format!("{} stored readings were never produced", self.unexpected),
        );
        expect(
            self.queue_left == 0,
            format!("{} frames left in the agents' queues", self.queue_left),
        );
        // Every bad message dead-lettered once, by the hop that rejected it, and
        // confirmed by Kafka; the topic holds exactly those (no duplicates, none lost).
        expect(
            self.confirmed_dead_letters == expected_dead_letters,
            format!(
                "{} dead letters confirmed, {expected_dead_letters} expected",
                self.confirmed_dead_letters
            ),
        );
        expect(
            self.dead_letters == self.confirmed_dead_letters,
            format!(
                "{} dead letters in sensors-dlq, {} confirmed",
                self.dead_letters, self.confirmed_dead_letters
            ),
        );
        expect(
            self.stats_mismatches.is_empty(),
            format!(
                "hourly stats differ from a recount: {:?}",
                self.stats_mismatches
            ),
        );
        expect(
            self.redis_mismatches.is_empty(),
            format!(
                "Redis differs from the newest rows: {:?}",
                self.redis_mismatches
            ),
        );
        // The pipeline knows exactly what it holds: its report matches the rows.
        expect(
            self.completeness_mismatches.is_empty(),
            format!(
                "the pipeline's completeness report differs from the rows: {:?}",
                self.completeness_mismatches
            ),
        );
        if policy != LossPolicy::QueueCap {
            expect(
                self.pipeline_missing == 0,
                format!(
                    "the pipeline reports {} readings missing",
                    self.pipeline_missing
                ),
            );
            expect(
                self.queue_dropped_frames == 0,
                format!("{} frames dropped by the queue", self.queue_dropped_frames),
            );
        }
        match policy {
            LossPolicy::None => expect(self.lost == 0, format!("{} readings lost", self.lost)),
            LossPolicy::QueueCap => {
                expect(
                    self.queue_dropped_frames > 0,
                    "the queue never reached its cap".into(),
                );
                expect(
                    self.lost_unreported == 0,
                    format!(
                        "{} lost readings the agents never reported dropping",
                        self.lost_unreported
                    ),
                );
                // The broker may take a frame just before it stops and never acknowledge
                // it: at most one in-flight window per gateway.
                let window = self.gateways * u64::from(QUEUE_CAP_INFLIGHT) * FRAME_READINGS;
                expect(
                    self.reported_unsent_stored <= window,
                    format!(
                        "{} readings reported as never acknowledged were stored (at most \
                         {window} may have been in flight)",
                        self.reported_unsent_stored
                    ),
                );
                expect(
                    self.lost_seen_reported_unsent <= window,
                    format!(
                        "{} lost readings reported as never acknowledged had reached the \
                         broker (at most {window} may have been in flight)",
                        self.lost_seen_reported_unsent
                    ),
                );
                expect(
                    self.pipeline_unexplained == 0,
                    format!(
                        "the pipeline cannot explain {} missing readings by the agents' \
                         reported drops",
                        self.pipeline_unexplained
                    ),
                );
            }
        }
        breaches
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ledger: {} (seed {})", self.scenario, self.seed)?;
        writeln!(
            f,
            "  produced     {:>9}  readings numbered and queued by the agents ({} device boots), \
             {:.0}/s over {:.1} s of sampling",
            self.produced,
            self.boots,
            self.produced as f64 / self.sampled.as_secs_f64().max(1e-3),
            self.sampled.as_secs_f64()
        )?;
        writeln!(
            f,
            "  in Kafka     {:>9}  distinct readings in sensors-data ({} copies; +{} other records)",
            self.in_kafka, self.kafka_copies, self.foreign_in_kafka
        )?;
        writeln!(
            f,
            "  stored       {:>9}  distinct (device, boot, seq) in sensor_readings",
            self.stored
        )?;
        writeln!(f, "  duplicates   {:>9}  rows", self.duplicates)?;
        writeln!(
            f,
            "  lost         {:>9}  readings ({} never reached the broker)",
            self.lost, self.unpublished
        )?;
        writeln!(
            f,
            "  unexpected   {:>9}  stored but never produced",
            self.unexpected
        )?;
        writeln!(
            f,
            "  resent       {:>9}  frames the agents sent again, unconfirmed in time",
            self.resent_frames
        )?;
        writeln!(
            f,
            "  queue        {:>9}  frames dropped at the cap, {} left after the clean stop",
            self.queue_dropped_frames, self.queue_left
        )?;
        if self.queue_dropped_frames > 0 || self.lost_unreported > 0 {
            writeln!(
                f,
                "               {:>9}  readings reported dropped unsent ({} stored anyway, {} lost though the broker had them), {} after their PUBACK; {} lost unreported",
                self.reported_unsent,
                self.reported_unsent_stored,
                self.lost_seen_reported_unsent,
                self.reported_after_puback,
                self.lost_unreported
            )?;
        }
        writeln!(
            f,
            "  completeness {:>9}  missing by the pipeline's own report ({} dropped at edge, {} unexplained), {} recovered; {} boots differ from the rows",
            self.pipeline_missing,
            self.pipeline_dropped_at_edge,
            self.pipeline_unexplained,
            self.pipeline_recovered,
            self.completeness_mismatches.len()
        )?;
        writeln!(
            f,
            "  dead letters {:>9}  confirmed by Kafka to the bridge and the ingester ({} foreign messages seen on the broker)",
            self.confirmed_dead_letters, self.foreign_messages
        )?;
        writeln!(
            f,
            "               {:>9}  in sensors-dlq {:?}",
            self.dead_letters, self.dead_letter_reasons
        )?;
        writeln!(
            f,
            "  hourly stats {:>9}  groups, {} differ from a recount of the rows",
            self.stats_groups,
            self.stats_mismatches.len()
        )?;
        writeln!(
            f,
            "  redis latest {:>9}  channels, {} differ from the newest rows",
            self.redis_channels,
            self.redis_mismatches.len()
        )?;
        for fault in &self.injected {
            writeln!(f, "  injected     {fault}")?;
        }
        for (fault, recovery) in &self.recoveries {
            writeln!(
                f,
                "  recovery     {:>8.2}s  after {fault}",
                recovery.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::BootCompleteness;

    fn queue_cap(lost_unreported: u64, reported_unsent_stored: u64) -> Vec<String> {
        queue_cap_ledger(lost_unreported, reported_unsent_stored).breaches(LossPolicy::QueueCap, 0)
    }

    fn queue_cap_ledger(lost_unreported: u64, reported_unsent_stored: u64) -> Ledger {
        Ledger {
            produced: 10_000,
            gateways: 2,
            queue_dropped_frames: 10,
            lost: 500,
            unpublished: 500,
            reported_unsent: 500,
            lost_unreported,
            reported_unsent_stored,
            ..Ledger::default()
        }
    }

    #[test]
    fn a_capped_queue_may_lose_only_what_the_agents_reported_dropping() {
        assert_eq!(queue_cap(0, 0), Vec::<String>::new());
        // One frame per gateway taken by the broker just before the outage.
        let window = 2 * FRAME_READINGS;
        assert_eq!(queue_cap(0, window), Vec::<String>::new());
        assert_eq!(queue_cap(0, window + 1).len(), 1);
        assert_eq!(queue_cap(1, 0).len(), 1);
        // Readings the broker had and the agents dropped after its PUBACK: the broker's
        // copy was lost (published before the bridge subscribed, say). Custody stayed
        // with the agents, which reported them.
        let after_puback = Ledger {
            unpublished: 400,
            reported_unsent: 400,
            reported_after_puback: 100,
            ..queue_cap_ledger(0, 0)
        };
        assert_eq!(
            after_puback.breaches(LossPolicy::QueueCap, 0),
            Vec::<String>::new()
        );
        // Reported as never acknowledged, yet the broker had them: only a frame in flight
        // per gateway may be.
        let in_flight = |lost_seen_reported_unsent| Ledger {
            unpublished: 500 - lost_seen_reported_unsent,
            lost_seen_reported_unsent,
            ..queue_cap_ledger(0, 0)
        };
        assert_eq!(
            in_flight(window).breaches(LossPolicy::QueueCap, 0),
            Vec::<String>::new()
        );
        assert_eq!(
            in_flight(window + 1)
                .breaches(LossPolicy::QueueCap, 0)
                .len(),
            1
        );
        let never_capped = Ledger {
            produced: 10_000,
            ..Ledger::default()
        };
        assert_eq!(
            never_capped.breaches(LossPolicy::QueueCap, 0).len(),
            1,
            "a queue that never hit its cap"
        );
    }

    fn boot(device: &str, expected: u64, stored: u64, holes: &[(u64, u64)]) -> BootCompleteness {
        BootCompleteness {
            device_id: device.to_owned(),
            boot_id: "0000000000000007".to_owned(),
            expected,
            stored,
            missing: expected - stored,
            dropped_at_edge: Some(0),
            unexplained: Some(expected - stored),
            recovered: 0,
            missing_ranges: holes.to_vec(),
        }
    }

    #[test]
    fn the_pipelines_completeness_must_match_the_rows_boot_by_boot() {
        let stored = Stored::from_identities(
            (0..10)
                .chain(20..30)
                .map(|seq| ("furnace-01".to_owned(), 7, seq)),
        );
        assert!(
            completeness_against_rows(&stored, &[boot("furnace-01", 30, 20, &[(10, 20)])])
                .is_empty()
        );
        let wrong_hole =
            completeness_against_rows(&stored, &[boot("furnace-01", 30, 20, &[(11, 21)])]);
        assert_eq!(wrong_hole.len(), 1, "{wrong_hole:?}");
        let too_few =
            completeness_against_rows(&stored, &[boot("furnace-01", 29, 19, &[(10, 20)])]);
        assert_eq!(too_few.len(), 1, "{too_few:?}");
        let missing_boot = completeness_against_rows(&stored, &[]);
        assert_eq!(
            missing_boot,
            vec!["furnace-01 boot 0000000000000007: stored, not reported"]
        );
        let foreign = completeness_against_rows(
            &stored,
            &[
                boot("furnace-01", 30, 20, &[(10, 20)]),
                boot("press-01", 1, 1, &[]),
            ],
        );
        assert_eq!(
            foreign,
            vec!["press-01 boot 0000000000000007: reported, nothing stored"]
        );
    }
}
