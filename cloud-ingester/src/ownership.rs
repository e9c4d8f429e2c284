//! Which instance ingests which partition, and from which offset: decided in PostgreSQL,
//! not by Kafka's group coordinator.
//!
//! A coordinator can forget a group or wedge its rebalance for good (Tansu gives a member
//! that joins beside a dead one no partitions, and never rebalances again), and an
//! ingester that sits in such a group stores nothing while data waits. So the ingester
//! assigns itself partitions explicitly (`assign`, no group membership) from leases kept
//! in `ingest_partitions` (see the migration for the table's rules):
//!
//! - every instance heartbeats into `ingest_members` and renews its leases;
//! - between batches it balances: the live members share the partitions, at most
//!   `ceil(partitions / members)` each; a member over its share releases the excess, one
//!   under it claims partitions whose lease is free or expired;
//! - every batch's transaction advances `next_offset` only where (owner, epoch) is still
//!   this instance's lease ([`Lease`]), so a member that lost a partition while stalled
//!   rolls back instead of moving someone else's progress.
//!
//! A dead instance's partitions are claimed once its lease expires ([`LEASE_TTL`]); a
//! clean stop releases them at once. Only PostgreSQL's clock is read.
//!
//! The topic's partitions are registered when an instance starts: partitions added to
//! the topic later are consumed once an instance restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::PgPool;

/// How long a lease lasts without renewal: a killed instance's partitions wait this long.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often leases are renewed and the partitions balanced.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// A partition this instance holds: the epoch that fences its writes, and where its
/// stored progress ends (`None`: nothing stored yet, read from the log's beginning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub epoch: i64,
    pub next_offset: Option<i64>,
}

/// What one balancing step changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    pub claimed: Vec<i32>,
    pub released: Vec<i32>,
    /// Partitions whose lease another instance took (this one was too slow to renew).
    pub lost: Vec<i32>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.claimed.is_empty() && self.released.is_empty() && self.lost.is_empty()
    }
}

/// The offset update of one batch: the partitions it read, fenced by their leases.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub consumer_group: String,
    pub topic: String,
    pub member: String,
    /// (partition, epoch, next offset after the batch).
    pub advances: Vec<(i32, i64, i64)>,
}

impl Progress {
    pub fn is_empty(&self) -> bool {
        self.advances.is_empty()
    }
}

/// This instance's view of the partitions of one topic in one group.
pub struct Ownership {
    pool: PgPool,
    group: String,
    topic: String,
    member: String,
    held: BTreeMap<i32, Lease>,
}

/// `interval` text PostgreSQL parses, for the lease length.
fn ttl_interval() -> String {
    format!("{} milliseconds", LEASE_TTL.as_millis())
}

impl Ownership {
    /// `member` must be unique to this process: it names the lease owner, and a restarted
    /// instance must not mistake its predecessor's leases (and their writes) for its own.
    pub fn new(pool: PgPool, group: &str, topic: &str, member: &str) -> Self {
        Self {
            pool,
            group: group.to_owned(),
            topic: topic.to_owned(),
            member: member.to_owned(),
            held: BTreeMap::new(),
        }
    }

    pub fn member(&self) -> &str {
        &self.member
    }

    /// The partitions held now, with their leases.
    pub fn held(&self) -> &BTreeMap<i32, Lease> {
        &self.held
    }

    /// Records that a batch's offsets were committed (so a re-assignment starts there).
    pub fn committed(&mut self, progress: &Progress) {
        for &(partition, epoch, next) in &progress.advances {
            if let Some(lease) = self.held.get_mut(&partition) {
                if lease.epoch == epoch {
                    lease.next_offset = Some(next);
                }
            }
        }
    }

    /// Forgets a partition's progress (the log behind it was reset): it is read from the
    /// beginning at its next assignment, and the stored offset follows the next commit.
    pub fn restart_from_beginning(&mut self, partition: i32) {
        if let Some(lease) = self.held.get_mut(&partition) {
            lease.next_offset = None;
        }
    }

    /// The offset update for a batch that read up to `last_offsets` (highest offset per
    /// partition); partitions not held are left out, and then the write is refused.
    pub fn progress(&self, last_offsets: &BTreeMap<i32, i64>) -> Progress {
        Progress {
            consumer_group: self.group.clone(),
            topic: self.topic.clone(),
            member: self.member.clone(),
            advances: last_offsets
                .iter()
                .map(|(&partition, &last)| {
                    let epoch = self.held.get(&partition).map_or(-1, |lease| lease.epoch);
                    (partition, epoch, last + 1)
                })
                .collect(),
        }
    }

    /// Makes sure a row exists for every partition of the topic.
    pub async fn register_partitions(&self, count: i32) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO ingest_partitions (consumer_group, topic, partition) \
             SELECT $1, $2, generate_series(0, $3 - 1) ON CONFLICT DO NOTHING",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(count)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Heartbeat, renewal, and one balancing step, in one transaction. The leases held
    /// in memory change only once it has committed.
    pub async fn balance(&mut self) -> Result<Change, sqlx::Error> {
        let ttl = ttl_interval();
        let held: Vec<i32> = self.held.keys().copied().collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO ingest_members (consumer_group, topic, member, seen_at) \
             VALUES ($1, $2, $3, now()) \
             ON CONFLICT (consumer_group, topic, member) DO UPDATE SET seen_at = now()",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(&self.member)
        .execute(&mut *tx)
        .await?;
        let renewed: Vec<(i32, i64)> = sqlx::query_as(
            "UPDATE ingest_partitions SET lease_until = now() + $4::interval \
              WHERE consumer_group = $1 AND topic = $2 AND owner = $3 AND partition = ANY($5) \
             RETURNING partition, lease_epoch",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(&self.member)
        .bind(&ttl)
        .bind(&held)
        .fetch_all(&mut *tx)
        .await?;
        let mut change = Change::default();
        let mut kept: Vec<i32> = Vec::with_capacity(held.len());
        for (&partition, lease) in &self.held {
            if renewed.contains(&(partition, lease.epoch)) {
                kept.push(partition);
            } else {
                change.lost.push(partition);
            }
        }

        // Killed instances leave their heartbeat behind; an hour later it is only noise.
        sqlx::query(
            "DELETE FROM ingest_members WHERE consumer_group = $1 AND topic = $2 \
               AND seen_at < now() - interval '1 hour'",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .execute(&mut *tx)
        .await?;
        let (partitions, members): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM ingest_partitions \
                      WHERE consumer_group = $1 AND topic = $2), \
                    (SELECT count(*) FROM ingest_members \
                      WHERE consumer_group = $1 AND topic = $2 \
                        AND seen_at > now() - $3::interval)",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(&ttl)
        .fetch_one(&mut *tx)
        .await?;
        let (partitions, members) = (
            u64::try_from(partitions).unwrap_or(0),
            u64::try_from(members).unwrap_or(0).max(1),
        );
        let share = usize::try_from(partitions.div_ceil(members)).unwrap_or(0);
        if kept.len() > share {
            // The highest partitions beyond the share go back.
            change.released = kept.split_off(share);
            sqlx::query(
                "UPDATE ingest_partitions SET owner = NULL, lease_until = NULL \
                  WHERE consumer_group = $1 AND topic = $2 AND owner = $3 \
                    AND partition = ANY($4)",
            )
            .bind(&self.group)
            .bind(&self.topic)
            .bind(&self.member)
            .bind(&change.released)
            .execute(&mut *tx)
            .await?;
        }
        let wanted = share.saturating_sub(kept.len());
        let claimed: Vec<(i32, i64, Option<i64>)> = if wanted > 0 {
            sqlx::query_as(
                "WITH free AS ( \
                   SELECT partition FROM ingest_partitions \
                    WHERE consumer_group = $1 AND topic = $2 \
                      AND (owner IS NULL OR lease_until < now()) \
                    ORDER BY partition LIMIT $5 FOR UPDATE SKIP LOCKED) \
                 UPDATE ingest_partitions p \
                    SET owner = $3, lease_epoch = p.lease_epoch + 1, \
                        lease_until = now() + $4::interval \
                   FROM free \
                  WHERE p.consumer_group = $1 AND p.topic = $2 AND p.partition = free.partition \
                 RETURNING p.partition, p.lease_epoch, p.next_offset",
            )
            .bind(&self.group)
            .bind(&self.topic)
            .bind(&self.member)
            .bind(&ttl)
            .bind(i64::try_from(wanted).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        for partition in change.lost.iter().chain(&change.released) {
            self.held.remove(partition);
        }
        for (partition, epoch, next_offset) in claimed {
            self.held.insert(partition, Lease { epoch, next_offset });
            change.claimed.push(partition);
        }
        change.claimed.sort_unstable();
        Ok(change)
    }

    /// Gives every lease back and leaves the membership: the other instances take the
    /// partitions at their next balancing step instead of after the lease expires.
    pub async fn leave(&mut self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE ingest_partitions SET owner = NULL, lease_until = NULL \
              WHERE consumer_group = $1 AND topic = $2 AND owner = $3",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(&self.member)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM ingest_members WHERE consumer_group = $1 AND topic = $2 AND member = $3",
        )
        .bind(&self.group)
        .bind(&self.topic)
        .bind(&self.member)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.held.clear();
        Ok(())
    }
}

/// Advances the batch's offsets inside its transaction. Returns the partitions whose
/// lease is no longer this instance's (then the caller rolls back).
pub async fn advance(
    tx: &mut sqlx::PgConnection,
    progress: &Progress,
) -> Result<Vec<i32>, sqlx::Error> {
    if progress.is_empty() {
        return Ok(Vec::new());
    }
    let partitions: Vec<i32> = progress.advances.iter().map(|a| a.0).collect();
    let epochs: Vec<i64> = progress.advances.iter().map(|a| a.1).collect();
    let next: Vec<i64> = progress.advances.iter().map(|a| a.2).collect();
    let advanced: Vec<i32> = sqlx::query_scalar(
        "UPDATE ingest_partitions p \
            SET next_offset = greatest(v.next_offset, 0), committed_at = now() \
           FROM unnest($4::int[], $5::bigint[], $6::bigint[]) AS v(partition, epoch, next_offset) \
          WHERE p.consumer_group = $1 AND p.topic = $2 AND p.owner = $3 \
            AND p.partition = v.partition AND p.lease_epoch = v.epoch \
         RETURNING p.partition",
    )
    .bind(&progress.consumer_group)
    .bind(&progress.topic)
    .bind(&progress.member)
    .bind(&partitions)
    .bind(&epochs)
    .bind(&next)
    .fetch_all(&mut *tx)
    .await?;
    Ok(partitions
        .into_iter()
        .filter(|partition| !advanced.contains(partition))
        .collect())
}
