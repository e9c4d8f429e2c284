//! Which readings PostgreSQL holds: per device and boot, the sequence numbers committed,
//! as ranges in `reading_coverage` (see the migration).
//!
//! A batch's rows are folded into runs of consecutive sequence numbers here, so the
//! database merges a handful of ranges per device rather than one per reading.

use crate::rows::Row;

/// Runs of consecutive sequence numbers, `(device, boot, first, last)` inclusive, in
/// (device, boot, first) order. One pass extends a run while the rows go on where it
/// ends (a frame's readings do), then the runs are sorted and joined: far cheaper than
/// sorting the rows, which a batch has thousands of.
pub fn runs(rows: &[Row]) -> Vec<(&str, i64, i64, i64)> {
    let mut runs: Vec<(&str, i64, i64, i64)> = Vec::new();
    for row in rows {
        match runs.last_mut() {
            Some((device, boot, _, last))
                if *device == row.device_id && *boot == row.boot_id && row.seq == *last + 1 =>
            {
                *last = row.seq;
            }
            _ => runs.push((&row.device_id, row.boot_id, row.seq, row.seq)),
        }
    }
    runs.sort_unstable();
    let mut joined: Vec<(&str, i64, i64, i64)> = Vec::with_capacity(runs.len());
    for run in runs {
        match joined.last_mut() {
            Some((device, boot, _, last))
                if *device == run.0 && *boot == run.1 && run.2 <= *last + 1 =>
            {
                *last = (*last).max(run.3);
            }
            _ => joined.push(run),
        }
    }
    joined
}

/// What PostgreSQL holds of one (device, boot) once the batch commits: its lowest
/// ranges of sequence numbers, ascending, half-open (at most [`HELD_RANGES`]), and when
/// it first saw the boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub device_id: String,
    pub boot_id: i64,
    pub ranges: Vec<(u64, u64)>,
    /// `reading_coverage.first_seen` in µs since the epoch: written once, by the first
    /// transaction that stored a reading of the boot, so it orders a device's boots
    /// without trusting any device clock (the boot first seen later is the newer,
    /// `service::clock`).
    pub first_seen_us: i64,
}

/// `reading_coverage.first_seen` as µs since the epoch, in SQL (exact: the column has
/// µs resolution, and µs stay below 2^53 until the year 2255, so Lua compares them
/// exactly too). A macro so statements can `concat!` it.
macro_rules! first_seen_us {
    () => {
        "(extract(epoch FROM first_seen) * 1000000)::int8"
    };
}
pub(crate) use first_seen_us;

/// Ranges returned per (device, boot): a confirmation carries a prefix and 16 more.
pub const HELD_RANGES: i64 = 1 + protocol::confirm::MAX_CONFIRM_RANGES as i64;

/// Unites the batch's sequence numbers into the coverage, inside the batch's
/// transaction (counting as `recovered` those that fill a hole below the highest already
/// held), and returns the coverage of every (device, boot) of the batch as it stands
/// after the statement (what a confirmation reports), with when the boot was first
/// seen (what orders the live views), in the same round trip. A
/// replay that adds nothing leaves the row untouched; its coverage is then read as it
/// was (the statement's snapshot, so never more than is committed). Rows are locked in
/// (device, boot) order, so two instances briefly writing the same devices (a lease
/// hand-over) cannot deadlock.
pub async fn record(tx: &mut sqlx::PgConnection, rows: &[Row]) -> Result<Vec<Held>, sqlx::Error> {
    let runs = runs(rows);
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let devices: Vec<&str> = runs.iter().map(|r| r.0).collect();
    let boots: Vec<i64> = runs.iter().map(|r| r.1).collect();
    let firsts: Vec<i64> = runs.iter().map(|r| r.2).collect();
    let lasts: Vec<i64> = runs.iter().map(|r| r.3).collect();
    let ranges: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(concat!(
        "WITH v AS ( \
             SELECT device_id, boot_id, range_agg(int8range(first, last, '[]')) AS seqs \
               FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) \
                    AS v(device_id, boot_id, first, last) \
              GROUP BY device_id, boot_id \
         ), up AS ( \
             INSERT INTO reading_coverage AS c (device_id, boot_id, seqs) \
             SELECT device_id, boot_id, seqs FROM v ORDER BY device_id, boot_id \
             ON CONFLICT (device_id, boot_id) DO UPDATE \
                SET seqs = c.seqs + EXCLUDED.seqs, updated_at = now(), \
                    recovered = c.recovered + (SELECT coalesce(sum(upper(r) - lower(r)), 0) \
                        FROM unnest((EXCLUDED.seqs - c.seqs) \
                                    * int8multirange(int8range(0, upper(c.seqs)))) AS r) \
              WHERE NOT c.seqs @> EXCLUDED.seqs \
             RETURNING c.device_id, c.boot_id, c.seqs, c.first_seen \
         ), held AS ( \
             SELECT device_id, boot_id, seqs, first_seen FROM up \
             UNION ALL \
             SELECT c.device_id, c.boot_id, c.seqs, c.first_seen \
               FROM reading_coverage c JOIN v USING (device_id, boot_id) \
              WHERE NOT EXISTS (SELECT 1 FROM up \
                                 WHERE up.device_id = c.device_id AND up.boot_id = c.boot_id) \
         ) \
         SELECT h.device_id, h.boot_id, lower(r.part), upper(r.part), ",
        first_seen_us!(),
        " FROM held h, unnest(h.seqs) WITH ORDINALITY AS r(part, n) \
          WHERE r.n <= $5 \
          ORDER BY h.device_id, h.boot_id, r.n",
    ))
    .bind(&devices)
    .bind(&boots)
    .bind(&firsts)
    .bind(&lasts)
    .bind(HELD_RANGES)
    .fetch_all(&mut *tx)
    .await?;
    Ok(group(ranges))
}

/// Rows of (device, boot, start, end, first seen), ordered by (device, boot), into one
/// [`Held`] each. The table's CHECK keeps every bound non-negative; a range that is not
/// is left out rather than trusted.
pub(crate) fn group(ranges: Vec<(String, i64, i64, i64, i64)>) -> Vec<Held> {
    let mut held: Vec<Held> = Vec::new();
    for (device_id, boot_id, start, end, first_seen_us) in ranges {
        let (Ok(start), Ok(end)) = (u64::try_from(start), u64::try_from(end)) else {
            continue;
        };
        match held.last_mut() {
            Some(last) if last.device_id == device_id && last.boot_id == boot_id => {
                last.ranges.push((start, end));
            }
            _ => held.push(Held {
                device_id,
                boot_id,
                ranges: vec![(start, end)],
                first_seen_us,
            }),
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, boot: i64, seq: i64) -> Row {
        Row {
            device_id: device.to_owned(),
            boot_id: boot,
            seq,
            ts_ms: 0,
            value: 0.0,
            channel_id: 0,
            quality: 0,
            clock_synced: true,
        }
    }

    #[test]
    fn consecutive_sequence_numbers_fold_into_runs_per_device_and_boot() {
        let rows = [
            row("b", 1, 7),
            row("a", 2, 3),
            row("a", 2, 1),
            row("a", 2, 2),
            row("a", 2, 2),
            row("a", 2, 9),
            row("a", 1, 0),
        ];
        assert_eq!(
            runs(&rows),
            vec![
                ("a", 1, 0, 0),
                ("a", 2, 1, 3),
                ("a", 2, 9, 9),
                ("b", 1, 7, 7)
            ]
        );
        assert!(runs(&[]).is_empty());
    }
}
