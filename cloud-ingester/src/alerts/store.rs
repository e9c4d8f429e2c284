//! The `alerts` table side of the engine: transitions written inside the batch's
//! transaction, and the state the engine restarts from.
//!
//! Every statement is keyed by (device, channel, rule) among unresolved alerts, the
//! table's partial unique index, so the engine needs no alert ids and a transition that
//! meets an alert changed meanwhile by someone else (an operator resolving it by hand,
//! another instance during a rebalance) does the sensible thing instead of failing.

use sqlx::types::chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{AlertKey, Change, OpenAlert, Rule, Severity, Transition};

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
/// is more severe. The channel is checked in the statement so that a channel deleted
/// since the rules were read skips the alert instead of failing the batch on the
/// foreign key.
const OPEN: &str = "INSERT INTO alerts \
       (device_id, channel_id, rule, severity, value, threshold, value_ts, message) \
     SELECT $1, $2, $3, $4::alert_severity, $5, $6, $7, $8 \
      WHERE EXISTS (SELECT 1 FROM device_channels WHERE device_id = $1 AND channel_id = $2) \
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
     WHERE device_id = $1 AND channel_id = $2 AND rule = $3 AND state <> 'resolved' \
       AND severity = 'warning' \
     RETURNING alert_id, state::text, severity::text";

const RESOLVE: &str = "UPDATE alerts SET state = 'resolved', resolved_at = now(), \
       resolved_value = $4 \
     WHERE device_id = $1 AND channel_id = $2 AND rule = $3 AND state <> 'resolved' \
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

/// The unresolved alerts, to rebuild the engine's state from.
pub async fn load_open(pool: &PgPool) -> Result<Vec<OpenAlert>, sqlx::Error> {
    let rows: Vec<(String, i16, String, String)> = sqlx::query_as(
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

/// Per channel, the device time (ms) of the newest stored reading: the engine's
/// watermark. One index probe per channel (the dedup key leads with device and time).
pub async fn load_watermarks(pool: &PgPool) -> Result<Vec<(String, i16, i64)>, sqlx::Error> {
    let rows: Vec<(String, i16, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT c.device_id, c.channel_id, \
                (SELECT max(r.ts) FROM sensor_readings r \
                  WHERE r.device_id = c.device_id AND r.channel_id = c.channel_id) \
           FROM device_channels c",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(device, channel, ts)| Some((device, channel, ts?.timestamp_millis())))
        .collect())
}
