//! The engine's SQL: its transitions written to the `alerts` table inside the batch's
//! transaction, and the state it restarts from. (`crate::store` is the batched write
//! path that runs the transaction.)
//!
//! Every statement is keyed by (device, channel, rule) among unresolved alerts, the
//! table's partial unique index, so the engine needs no alert ids and a transition that
//! meets an alert changed meanwhile by someone else (an operator resolving it by hand,
//! another instance during a rebalance) does the sensible thing instead of failing. A
//! device-level alert (`data_loss`) has no channel: the index treats NULLs as equal, and
//! the statements compare the channel with `IS NOT DISTINCT FROM`.

use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::data_loss::MAX_LOSSY_BOOTS;
use super::{AlertKey, Change, FirstSeen, OpenAlert, ResumeAt, Rule, Severity, Transition};
use crate::coverage::{first_seen_us, Held, HELD_RANGES};

/// A transition as the database took it.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub alert_id: i64,
    /// `alerts.state` and `alerts.severity` after the transition.
    pub state: String,
    pub severity: String,
    pub transition: Transition,
}

/// Opens an alert. If one is already unresolved (a rebalance race, or a warning resolved
/// by hand that is now critical), it is kept, and raised like an escalation if this one
/// is more severe. The channel (the device, for a device-level alert) is checked in the
/// statement so that one deleted since the rules were read skips the alert instead of
/// failing the batch on the foreign key.
const OPEN: &str = "INSERT INTO alerts \
       (device_id, channel_id, rule, severity, value, threshold, value_ts, message) \
     SELECT $1, $2, $3, $4::alert_severity, $5, $6, $7, $8 \
      WHERE EXISTS (SELECT 1 FROM device_channels WHERE device_id = $1 AND channel_id = $2) \
         OR ($2::int2 IS NULL AND EXISTS (SELECT 1 FROM devices WHERE device_id = $1)) \
     ON CONFLICT (device_id, channel_id, rule) WHERE state <> 'resolved' \
     DO UPDATE SET severity = EXCLUDED.severity, value = EXCLUDED.value, \
       threshold = EXCLUDED.threshold, value_ts = EXCLUDED.value_ts, \
       message = EXCLUDED.message, state = 'open', acknowledged_at = NULL, \
       acknowledged_by = NULL \
     WHERE EXCLUDED.severity > alerts.severity \
     RETURNING alert_id, state::text, severity::text";

/// A warning becomes critical; an acknowledged one needs acknowledging again.
const ESCALATE: &str = "UPDATE alerts SET severity = 'critical', value = $4, threshold = $5, \
       value_ts = $6, message = $7, state = 'open', acknowledged_at = NULL, \
       acknowledged_by = NULL \
     WHERE device_id = $1 AND channel_id IS NOT DISTINCT FROM $2 AND rule = $3 \
       AND state <> 'resolved' \
       AND severity = 'warning' \
     RETURNING alert_id, state::text, severity::text";

const RESOLVE: &str = "UPDATE alerts SET state = 'resolved', resolved_at = now(), \
       resolved_value = $4 \
     WHERE device_id = $1 AND channel_id IS NOT DISTINCT FROM $2 AND rule = $3 \
       AND state <> 'resolved' \
     RETURNING alert_id, state::text, severity::text";

fn timestamp(ts_ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ts_ms)
}

/// Writes `transitions`, in order, on the batch's transaction. A transition that finds
/// nothing to change (resolving an alert already resolved by hand) is left out of the
/// result.
pub async fn apply(
    conn: &mut PgConnection,
    transitions: &[Transition],
) -> Result<Vec<Applied>, sqlx::Error> {
    let mut applied = Vec::with_capacity(transitions.len());
    for transition in transitions {
        let key = &transition.key;
        let row: Option<(i64, String, String)> = match transition.change {
            Change::Opened => open(conn, transition).await?,
            Change::Escalated => {
                let escalated = sqlx::query_as(ESCALATE)
                    .bind(&key.device_id)
                    .bind(key.channel_id)
                    .bind(key.rule.code())
                    .bind(transition.value)
                    .bind(transition.threshold)
                    .bind(timestamp(transition.ts_ms))
                    .bind(&transition.message)
                    .fetch_optional(&mut *conn)
                    .await?;
                match escalated {
                    Some(row) => Some(row),
                    // Resolved by hand meanwhile, or already critical: open, or leave as it is.
                    None => open(conn, transition).await?,
                }
            }
            Change::Resolved => {
                sqlx::query_as(RESOLVE)
                    .bind(&key.device_id)
                    .bind(key.channel_id)
                    .bind(key.rule.code())
                    .bind(transition.value)
                    .fetch_optional(&mut *conn)
                    .await?
            }
        };
        if let Some((alert_id, state, severity)) = row {
            applied.push(Applied {
                alert_id,
                state,
                severity,
                transition: transition.clone(),
            });
        }
    }
    Ok(applied)
}

async fn open(
    conn: &mut PgConnection,
    transition: &Transition,
) -> Result<Option<(i64, String, String)>, sqlx::Error> {
    let key = &transition.key;
    sqlx::query_as(OPEN)
        .bind(&key.device_id)
        .bind(key.channel_id)
        .bind(key.rule.code())
        .bind(transition.severity.code())
        .bind(transition.value)
        .bind(transition.threshold)
        .bind(timestamp(transition.ts_ms))
        .bind(&transition.message)
        .fetch_optional(conn)
        .await
}

/// Writes `transitions` that follow no batch's rows (`data_loss`) in a transaction of
/// their own, as [`apply`] does in a batch's.
pub async fn apply_alone(
    pool: &PgPool,
    transitions: &[Transition],
) -> Result<Vec<Applied>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let applied = apply(&mut tx, transitions).await?;
    tx.commit().await?;
    Ok(applied)
}

/// The unresolved alerts, to rebuild the engine's state from.
pub async fn load_open(pool: &PgPool) -> Result<Vec<OpenAlert>, sqlx::Error> {
    let rows: Vec<(String, Option<i16>, String, String)> = sqlx::query_as(
        "SELECT device_id, channel_id, rule, severity::text FROM alerts \
          WHERE state <> 'resolved'",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(device_id, channel_id, rule, severity)| {
            Some(OpenAlert {
                key: AlertKey {
                    device_id,
                    channel_id,
                    rule: Rule::from_code(&rule)?,
                },
                severity: Severity::from_code(&severity)?,
            })
        })
        .collect())
}

/// The coverage of every device's boots with holes (at most [`MAX_LOSSY_BOOTS`] per
/// device, the most recently written), each as far as a commit returns it
/// ([`HELD_RANGES`] ranges), ordered by device and then least recently written first:
/// what the `data_loss` rule restarts from. A boot without holes is one range from 0
/// and is left out.
pub async fn load_coverage(pool: &PgPool) -> Result<Vec<Held>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(concat!(
        "SELECT c.device_id, c.boot_id, lower(r.part), upper(r.part), c.first_seen_us \
           FROM (SELECT device_id, boot_id, seqs, updated_at, ",
        first_seen_us!(),
        " AS first_seen_us, \
                        row_number() OVER (PARTITION BY device_id \
                                           ORDER BY updated_at DESC, boot_id) AS recent \
                   FROM reading_coverage \
                  WHERE lower(seqs) > 0 OR seqs <> int8multirange(range_merge(seqs))) c, \
                unnest(c.seqs) WITH ORDINALITY AS r(part, n) \
          WHERE c.recent <= $1 AND r.n <= $2 \
          ORDER BY c.device_id, c.updated_at, c.boot_id, r.n",
    ))
    .bind(MAX_LOSSY_BOOTS as i64)
    .bind(HELD_RANGES)
    .fetch_all(pool)
    .await?;
    Ok(crate::coverage::group(rows))
}

/// Per device whose newest `data_loss` alert an operator resolved by hand (no
/// `resolved_value`, which the engine always sets), the readings it counted: the loss
/// accepted. One index probe per device (`alerts_device_opened_at`).
pub async fn load_accepted(pool: &PgPool) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT d.device_id, a.value \
           FROM devices d \
           CROSS JOIN LATERAL (SELECT value, state, resolved_value FROM alerts a \
                                WHERE a.device_id = d.device_id AND a.rule = 'data_loss' \
                                ORDER BY a.opened_at DESC, a.alert_id DESC LIMIT 1) a \
          WHERE a.state = 'resolved' AND a.resolved_value IS NULL AND a.value >= 0",
    )
    .fetch_all(pool)
    .await?;
    // A count stored as double precision: exact up to 2^53 readings.
    Ok(rows
        .into_iter()
        .map(|(device, value)| (device, value as u64))
        .collect())
}

/// Per channel, the device time (ms) of the newest stored reading dated at most
/// `latest_ms` (the ingester's clock plus `clock.max_ahead`: a reading dated beyond it
/// was never evaluated, and durations must not start from it). One index probe per
/// channel (`(device_id, channel_id, ts)`).
pub async fn load_watermarks(
    pool: &PgPool,
    latest_ms: i64,
) -> Result<Vec<(String, i16, i64)>, sqlx::Error> {
    let Some(latest) = timestamp(latest_ms) else {
        return Ok(Vec::new());
    };
    let rows: Vec<(String, i16, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT c.device_id, c.channel_id, \
                (SELECT max(r.ts) FROM sensor_readings r \
                  WHERE r.device_id = c.device_id AND r.channel_id = c.channel_id \
                    AND r.ts <= $1) \
           FROM device_channels c",
    )
    .bind(latest)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(device, channel, ts)| Some((device, channel, ts?.timestamp_millis())))
        .collect())
}

/// Per device, its newest boot (first seen last; boots first seen together by boot id
/// as unsigned, the engine's and the Redis writer's order) and the highest sequence
/// number held of it: where evaluation resumes. One probe of the primary key per device.
pub async fn load_resume(pool: &PgPool) -> Result<Vec<ResumeAt>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(concat!(
        "SELECT d.device_id, c.boot_id, c.first_seen_us, c.seq \
           FROM devices d \
           CROSS JOIN LATERAL (SELECT boot_id, coalesce(upper(seqs) - 1, -1) AS seq, ",
        first_seen_us!(),
        " AS first_seen_us \
                 FROM reading_coverage c WHERE c.device_id = d.device_id \
                ORDER BY first_seen DESC, boot_id # (-9223372036854775808)::int8 DESC \
                LIMIT 1) c",
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(device_id, boot_id, first_seen_us, seq)| ResumeAt {
            device_id,
            boot_id,
            first_seen_us,
            seq,
        })
        .collect())
}

/// When PostgreSQL first saw each of `boots` (device, boot), in µs; a boot it has never
/// stored is absent. Asked only for boots the engine does not know as its devices'
/// newest ([`super::AlertEngine::unfamiliar_boots`]), so rarely.
pub async fn first_seen(pool: &PgPool, boots: &[(String, i64)]) -> Result<FirstSeen, sqlx::Error> {
    if boots.is_empty() {
        return Ok(FirstSeen::new());
    }
    let devices: Vec<&str> = boots.iter().map(|(device, _)| device.as_str()).collect();
    let ids: Vec<i64> = boots.iter().map(|(_, boot)| *boot).collect();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(concat!(
        "SELECT c.device_id, c.boot_id, ",
        first_seen_us!(),
        " FROM reading_coverage c \
           JOIN unnest($1::text[], $2::int8[]) AS b(device_id, boot_id) \
             USING (device_id, boot_id)",
    ))
    .bind(&devices)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(device, boot, first_seen_us)| ((device, boot), first_seen_us))
        .collect())
}
