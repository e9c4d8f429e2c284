//! The ledger of a scenario: every reading the agents produced held against what
//! PostgreSQL stored, plus the derived state that must agree with the rows (hourly
//! statistics, Redis latest values) and the dead letters. It is printed whole, so a
//! passing run shows its figures as plainly as a failing one.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result};
use contracts::redis::{LatestValue, RedisKeys, DEFAULT_PREFIX};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redis::AsyncCommands;
use sqlx::PgPool;

use crate::observer::Observed;
use crate::pipeline::{BootCompleteness, Finished};
use crate::workload::{self, FRAME_READINGS, GATEWAYS, QUEUE_CAP_INFLIGHT};

/// What the design promises for a scenario's losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossPolicy {
    /// Covered by the design: nothing lost.
    None,
    /// The agents' queue reached its cap and dropped its oldest frames: every missing
    /// reading is one the agents reported dropping, and of those they reported as never
    /// acknowledged by the broker, at most one in-flight frame per gateway got through.
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
        let pipeline = &finished.pipeline;
        let mut ledger = Ledger {
            scenario: scenario.to_owned(),
            seed,
            boots: finished.observed.seqs.len(),
            foreign_messages: finished.observed.foreign,
            queue_left: finished.queues.iter().map(|q| q.0).sum(),
            queue_dropped_frames: finished.queues.iter().map(|q| q.1).sum(),
            confirmed_dead_letters: finished.confirmed_dead_letters,
            ..Ledger::default()
        };

        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT device_id, boot_id, seq, count(*) FROM sensor_readings GROUP BY 1, 2, 3",
        )
        .fetch_all(&pipeline.db)
        .await
        .context("reading the stored identities")?;
        let mut stored: HashSet<(String, i64, u64)> = HashSet::with_capacity(rows.len());
        for (device, boot, seq, count) in rows {
            ledger.duplicates += (count - 1) as u64;
            stored.insert((device, boot, seq as u64));
        }
        ledger.stored = stored.len() as u64;

        let mut produced = 0u64;
        for ((device, boot), seqs) in &finished.observed.seqs {
            let Some(&highest) = seqs.last() else {
                continue;
            };
            for seq in 0..=highest {
                produced += 1;
                if !stored.contains(&(device.clone(), *boot, seq)) {
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
            let key = (device.clone(), *boot, *seq);
            match (acknowledged, stored.contains(&key)) {
                (true, _) => ledger.reported_after_puback += 1,
                (false, stored) => {
                    ledger.reported_unsent += 1;
                    ledger.reported_unsent_stored += u64::from(stored);
                }
            }
        }
        for ((device, boot), seqs) in &finished.observed.seqs {
            let highest = seqs.last().copied().unwrap_or(0);
            ledger.lost_unreported += (0..=highest)
                .filter(|seq| {
                    let key = (device.clone(), *boot, *seq);
                    !stored.contains(&key) && !reported.contains_key(&key)
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
            .iter()
            .filter(|(device, boot, seq)| {
                finished
                    .observed
                    .seqs
                    .get(&(device.clone(), *boot))
                    .and_then(|s| s.last())
                    .is_none_or(|highest| seq > highest)
            })
            .count() as u64;

        (ledger.stats_groups, ledger.stats_mismatches) =
            stats_against_recount(&pipeline.db).await?;
        (ledger.redis_channels, ledger.redis_mismatches) =
            redis_against_rows(&pipeline.db, &pipeline.redis.url()).await?;
        let brokers = pipeline.kafka.brokers();
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
        // confirmed by Kafka. What the topic then holds is checked against that: never
        // more (no duplicates); fewer is the broker losing records it acknowledged,
        // which the ledger reports but which is not this pipeline's to keep.
        expect(
            self.confirmed_dead_letters == expected_dead_letters,
            format!(
                "{} dead letters confirmed, {expected_dead_letters} expected",
                self.confirmed_dead_letters
            ),
        );
        expect(
            self.dead_letters <= self.confirmed_dead_letters,
            format!(
                "{} dead letters in sensors-dlq, only {} sent",
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
                let window = GATEWAYS.len() as u64 * u64::from(QUEUE_CAP_INFLIGHT) * FRAME_READINGS;
                expect(
                    self.reported_unsent_stored <= window,
                    format!(
                        "{} readings reported as never acknowledged were stored (at most \
                         {window} may have been in flight)",
                        self.reported_unsent_stored
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
                expect(
                    self.unpublished == self.lost,
                    format!(
                        "{} of the {} lost readings had reached the broker",
                        self.lost - self.unpublished,
                        self.lost
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
            "  produced     {:>9}  readings numbered and queued by the agents ({} device boots)",
            self.produced, self.boots
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
                "               {:>9}  readings reported dropped unsent ({} stored anyway), {} after their PUBACK; {} lost unreported",
                self.reported_unsent,
                self.reported_unsent_stored,
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
        if self.dead_letters < self.confirmed_dead_letters {
            writeln!(
                f,
                "               {:>9}  acknowledged by the Kafka-compatible broker, then missing from it",
                self.confirmed_dead_letters - self.dead_letters
            )?;
        }
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

/// Holds the pipeline's completeness report against the stored rows, boot by boot: the
/// same readings stored, the same highest, the same holes below it. Each disagreement,
/// named.
fn completeness_against_rows(
    stored: &HashSet<(String, i64, u64)>,
    report: &[BootCompleteness],
) -> Vec<String> {
    let mut boots: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (device, boot, seq) in stored {
        boots
            .entry((device.clone(), format!("{:016x}", *boot as u64)))
            .or_default()
            .push(*seq);
    }
    let mut mismatches = Vec::new();
    let mut reported: HashSet<(String, String)> = HashSet::new();
    for entry in report {
        let key = (entry.device_id.clone(), entry.boot_id.clone());
        let name = format!("{} boot {}", entry.device_id, entry.boot_id);
        if !reported.insert(key.clone()) {
            mismatches.push(format!("{name}: reported twice"));
            continue;
        }
        let Some(seqs) = boots.get_mut(&key) else {
            mismatches.push(format!("{name}: reported, nothing stored"));
            continue;
        };
        seqs.sort_unstable();
        let expected = seqs.last().map_or(0, |highest| highest + 1);
        let mut holes: Vec<(u64, u64)> = Vec::new();
        let mut next = 0;
        for &seq in seqs.iter() {
            if seq > next {
                holes.push((next, seq));
            }
            next = seq + 1;
        }
        let rows = (expected, seqs.len() as u64, expected - seqs.len() as u64);
        let said = (entry.expected, entry.stored, entry.missing);
        if rows != said {
            mismatches.push(format!(
                "{name}: (expected, stored, missing) {said:?}, the rows {rows:?}"
            ));
        }
        if holes != entry.missing_ranges {
            mismatches.push(format!(
                "{name}: missing {:?}, the rows {holes:?}",
                entry.missing_ranges
            ));
        }
    }
    for (device, boot) in boots.keys() {
        if !reported.contains(&(device.clone(), boot.clone())) {
            mismatches.push(format!("{device} boot {boot}: stored, not reported"));
        }
    }
    mismatches
}

/// Compares `device_stats_hourly` with the same aggregates recomputed from the rows
/// (finite values only, as the ingester folds them). Sums are compared to a relative
/// 1e-9: the ingester adds them batch by batch, the recount in one go.
async fn stats_against_recount(db: &PgPool) -> Result<(u64, Vec<String>)> {
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM device_stats_hourly")
        .fetch_one(db)
        .await
        .context("counting device_stats_hourly")?;
    let mismatches: Vec<String> = sqlx::query_scalar(
        "WITH recount AS (
             SELECT device_id, channel_id,
                    date_bin('1 hour', ts, timestamptz '2000-01-01 00:00:00+00') AS hour,
                    count(*) AS count, min(value::float8) AS min, max(value::float8) AS max,
                    sum(value::float8) AS sum, sum(value::float8 * value::float8) AS sum_sq
               FROM sensor_readings
              WHERE value NOT IN ('NaN', 'Infinity', '-Infinity')
              GROUP BY 1, 2, 3)
         SELECT format('%s/%s %s: count %s vs %s, min %s vs %s, max %s vs %s, sum %s vs %s',
                       coalesce(r.device_id, s.device_id), coalesce(r.channel_id, s.channel_id),
                       coalesce(r.hour, s.hour), r.count, s.count, r.min, s.min, r.max, s.max,
                       r.sum, s.sum)
           FROM recount r
           FULL JOIN device_stats_hourly s
             ON (s.device_id, s.channel_id, s.hour) = (r.device_id, r.channel_id, r.hour)
          WHERE r.count IS DISTINCT FROM s.count
             OR r.min IS DISTINCT FROM s.min
             OR r.max IS DISTINCT FROM s.max
             OR abs(r.sum - s.sum) > 1e-9 * greatest(1, abs(r.sum))
             OR abs(r.sum_sq - s.sum_sq) > 1e-9 * greatest(1, abs(r.sum_sq))
          LIMIT 10",
    )
    .fetch_all(db)
    .await
    .context("recounting the hourly statistics")?;
    Ok((groups as u64, mismatches))
}

/// Compares each channel's Redis latest value with the newest row, in the order the
/// ingester's script keeps: reading time, then boot id as unsigned bytes, then seq.
async fn redis_against_rows(db: &PgPool, redis_url: &str) -> Result<(u64, Vec<String>)> {
    let client = redis::Client::open(redis_url).context("Redis URL")?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let mut channels = 0;
    let mut mismatches = Vec::new();
    for device in workload::devices() {
        // The pipeline's order (service::clock): the boot first seen later, then the
        // sequence number; never the device's clock.
        let newest: Vec<(i16, i64, i64, i64)> = sqlx::query_as(
            "SELECT DISTINCT ON (r.channel_id) r.channel_id,
                    round(extract(epoch FROM r.ts) * 1000)::bigint, r.boot_id, r.seq
               FROM sensor_readings r
               JOIN reading_coverage c USING (device_id, boot_id)
              WHERE r.device_id = $1
              ORDER BY r.channel_id, c.first_seen DESC,
                       r.boot_id # (-9223372036854775808)::bigint DESC, r.seq DESC",
        )
        .bind(device)
        .fetch_all(db)
        .await
        .context("reading the newest rows")?;
        let latest: BTreeMap<String, String> = redis
            .hgetall(RedisKeys::new(DEFAULT_PREFIX).latest(device))
            .await
            .context("reading the latest values from Redis")?;
        for (channel, ts, boot, seq) in newest {
            channels += 1;
            let want = (ts, format!("{:016x}", boot as u64), seq);
            let got = latest
                .get(&channel.to_string())
                .and_then(|json| serde_json::from_str::<LatestValue>(json).ok())
                .map(|v| (v.ts, v.boot, v.seq));
            if got.as_ref() != Some(&want) {
                mismatches.push(format!(
                    "{device}/{channel}: Redis {got:?}, newest row {want:?}"
                ));
            }
        }
    }
    Ok((channels, mismatches))
}

/// The readings the agents reported dropping at their cap, each with whether the broker
/// had acknowledged it, from the newest health report of each gateway.
fn reported_drops(observed: &Observed) -> Result<BTreeMap<(String, i64, u64), bool>> {
    let mut drops = BTreeMap::new();
    for (gateway, health) in &observed.health {
        for span in &health.dropped {
            let boot = u64::from_str_radix(&span.boot, 16).with_context(|| {
                format!("{gateway}: a dropped span with a malformed boot: {span:?}")
            })? as i64;
            for (list, acknowledged) in [(&span.unsent, false), (&span.after_puback, true)] {
                for &[start, end] in list {
                    for seq in start..end {
                        drops.insert((span.device.clone(), boot, seq), acknowledged);
                    }
                }
            }
        }
    }
    Ok(drops)
}

/// Every record of `sensors-dlq`, counted by its `dlq-reason` header.
pub fn dead_letter_reasons(brokers: &str) -> Result<BTreeMap<String, u64>> {
    let mut reasons = BTreeMap::new();
    read_topic(brokers, protocol::kafka::SENSORS_DLQ, |record| {
        let reason = record
            .headers()
            .and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == protocol::kafka::headers::DLQ_REASON)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_else(|| "(no reason)".to_owned());
        *reasons.entry(reason).or_default() += 1;
    })?;
    Ok(reasons)
}

/// The hop between the bridge and the ingester: distinct readings of the workload's
/// devices in `sensors-data`, and the records that are not the workload's.
pub fn kafka_hop(brokers: &str) -> Result<(u64, u64, u64)> {
    let devices = workload::devices();
    let mut readings: HashSet<(String, i64, u64)> = HashSet::new();
    let mut copies = 0;
    let mut foreign = 0;
    read_topic(
        brokers,
        protocol::kafka::SENSORS_DATA,
        |record| match protocol::Frame::decode(record.payload().unwrap_or_default()) {
            Ok(frame) if devices.contains(&frame.device.as_str()) => {
                copies += frame.readings.len() as u64;
                for seq in frame.first_seq..frame.first_seq + frame.readings.len() as u64 {
                    readings.insert((
                        frame.device.as_str().to_owned(),
                        frame.boot_id.as_i64(),
                        seq,
                    ));
                }
            }
            _ => foreign += 1,
        },
    )?;
    Ok((readings.len() as u64, copies, foreign))
}

/// Reads every record a topic holds now, from the first to the high watermark of
/// each partition.
fn read_topic(
    brokers: &str,
    topic: protocol::kafka::KafkaTopic,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<()> {
    let consumer = ledger_consumer(brokers)?;
    let mut assignment = TopicPartitionList::new();
    // Per partition, the offset one past the last record there now.
    let mut ends = BTreeMap::new();
    for partition in 0..topic.partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic.name, partition, Duration::from_secs(10))
            .with_context(|| format!("watermarks of {}/{partition}", topic.name))?;
        if high > 0 {
            ends.insert(partition, high);
            assignment
                .add_partition_offset(topic.name, partition, Offset::Beginning)
                .context("building the assignment")?;
        }
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning {}", topic.name))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{} partitions unread to their end after 60 s", topic.name);
        }
        let Some(record) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let record = record.with_context(|| format!("reading {}", topic.name))?;
        if ends
            .get(&record.partition())
            .is_some_and(|&end| record.offset() < end)
        {
            each(&record);
        }
        if ends
            .get(&record.partition())
            .is_some_and(|&end| record.offset() + 1 >= end)
        {
            ends.remove(&record.partition());
        }
    }
    Ok(())
}

fn ledger_consumer(brokers: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "e2e-ledger")
        .set("enable.auto.commit", "false")
        .create()
        .context("Kafka consumer for the ledger")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_cap(lost_unreported: u64, reported_unsent_stored: u64) -> Vec<String> {
        let ledger = Ledger {
            produced: 10_000,
            queue_dropped_frames: 10,
            lost: 500,
            unpublished: 500,
            reported_unsent: 500,
            lost_unreported,
            reported_unsent_stored,
            ..Ledger::default()
        };
        ledger.breaches(LossPolicy::QueueCap, 0)
    }

    #[test]
    fn a_capped_queue_may_lose_only_what_the_agents_reported_dropping() {
        assert_eq!(queue_cap(0, 0), Vec::<String>::new());
        // One frame per gateway taken by the broker just before the outage.
        let window = GATEWAYS.len() as u64 * FRAME_READINGS;
        assert_eq!(queue_cap(0, window), Vec::<String>::new());
        assert_eq!(queue_cap(0, window + 1).len(), 1);
        assert_eq!(queue_cap(1, 0).len(), 1);
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
        let stored: HashSet<(String, i64, u64)> = (0..10)
            .chain(20..30)
            .map(|seq| ("furnace-01".to_owned(), 7, seq))
            .collect();
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
