//! How iotctl prints: tables for people, JSON for machines, and the few formats every
//! command shares (times in UTC with milliseconds, ages, quality flags), so the same
//! fact reads the same in every command.

use std::io::{ErrorKind, Write};

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use protocol::Quality;
use serde::Serialize;
use sqlx::types::chrono::{DateTime, Utc};

/// Writes one line to stdout. A reader that went away (`iotctl tail | head`) ends the
/// program quietly, as Unix tools do, instead of a panic about a broken pipe.
pub fn emit(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Prints `value` as one line of JSON.
pub fn emit_json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(json) => emit(&json),
        Err(e) => {
            eprintln!("error: encoding JSON output: {e}");
            std::process::exit(1);
        }
    }
}

/// A borderless table with a header, columns as wide as their content; columns in
/// `right` (numbers) are right-aligned.
pub fn table(header: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    for &index in right {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Prints a table, or `empty` when it has no rows.
pub fn emit_table(table: &Table, empty: &str) {
    if table.row_count() == 0 {
        emit(empty);
    } else {
        // comfy-table pads the last column too; trailing blanks help nobody.
        for line in table.lines() {
            emit(line.trim_end());
        }
    }
}

/// An error with its causes, `a: b: c`, leaving out a cause whose text the message
/// already holds (database and Kafka errors repeat their source in their own text).
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// The names of the quality bits set, for JSON.
pub fn quality_flags(quality: Quality) -> Vec<&'static str> {
    let mut flags = Vec::new();
    if quality.contains(Quality::SIMULATED_ANOMALY) {
        flags.push("anomaly");
    }
    if quality.contains(Quality::OUT_OF_RANGE) {
        flags.push("out-of-range");
    }
    if quality.contains(Quality::SENSOR_FAULT) {
        flags.push("sensor-fault");
    }
    flags
}

/// The quality bits for a table cell: `ok`, or the flags joined by commas.
pub fn quality_text(quality: Quality) -> String {
    if quality.is_empty() {
        "ok".to_owned()
    } else {
        quality_flags(quality).join(",")
    }
}

/// Quality bits as stored (`smallint`, JSON number): only the three defined bits count.
pub fn quality_from_bits(bits: i64) -> Quality {
    Quality::from_bits_truncate((bits & 0b111) as u8)
}

/// `2026-11-30T11:16:00.123Z`; a time no calendar can show stays a number.
pub fn time_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).map_or_else(|| format!("{ms} ms"), |t| time(&t))
}

pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The start of an hour: `2026-11-30 11:00`.
pub fn hour(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// How long ago, readable at a glance: `850 ms`, `42 s`, `3 min`, `2 h 5 min`, `3 d 4 h`.
/// A negative age (a device clock ahead) reads `in …`.
pub fn age(ms: i64) -> String {
    if ms < 0 {
        return format!("in {}", age(ms.saturating_neg()));
    }
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms} ms"),
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => match (s % 3600) / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        },
        _ => match (s % 86_400) / 3600 {
            0 => format!("{} d", s / 86_400),
            h => format!("{} d {h} h", s / 86_400),
        },
    }
}

/// A statistic: three decimals, or `-` when there is none.
pub fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

/// A reading as an `f64` that prints as the `f32` it was measured as (26.717482, not
/// 26.71748161315918), for JSON output.
pub fn as_measured(value: f32) -> f64 {
    if value.is_finite() {
        value.to_string().parse().unwrap_or(f64::from(value))
    } else {
        f64::from(value)
    }
}

/// A value as it was measured (an `f32`, shortest exact form), `NaN` when not finite.
pub fn reading(value: f32) -> String {
    if value.is_finite() {
        value.to_string()
    } else {
        "NaN".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_keep_their_measured_digits() {
        assert_eq!(as_measured(26.717_482).to_string(), "26.717482");
        assert_eq!(as_measured(851.25), 851.25);
        assert!(as_measured(f32::NAN).is_nan());
    }

    #[test]
    fn quality_flags_in_tables_and_json() {
        assert_eq!(quality_text(Quality::empty()), "ok");
        assert_eq!(quality_text(Quality::SIMULATED_ANOMALY), "anomaly");
        assert_eq!(
            quality_text(Quality::OUT_OF_RANGE | Quality::SENSOR_FAULT),
            "out-of-range,sensor-fault"
        );
        assert_eq!(
            quality_flags(Quality::all()),
            ["anomaly", "out-of-range", "sensor-fault"]
        );
        assert!(quality_flags(Quality::empty()).is_empty());
        assert_eq!(quality_from_bits(0b1010), Quality::OUT_OF_RANGE);
        assert_eq!(quality_from_bits(-1), Quality::all());
    }

    #[test]
    fn tables_align_and_trim() {
        let mut t = table(&["device", "count"], &[1]);
        t.add_row(vec!["furnace-01", "7"]);
        t.add_row(vec!["press-01", "1234"]);
        let lines: Vec<String> = t.lines().map(|l| l.trim_end().to_owned()).collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("DEVICE") && lines[0].contains("COUNT"));
        // Right-aligned: the numbers end in the same column.
        assert_eq!(lines[1].len(), lines[2].len());
        assert!(lines[1].ends_with(" 7") && lines[2].ends_with("1234"));
    }

    #[test]
    fn times_and_ages() {
        assert_eq!(time_ms(1_764_501_360_123), "2025-11-30T11:16:00.123Z");
        assert_eq!(time_ms(i64::MAX), format!("{} ms", i64::MAX));
        assert_eq!(age(850), "850 ms");
        assert_eq!(age(42_900), "42 s");
        assert_eq!(age(185_000), "3 min");
        assert_eq!(age(7_500_000), "2 h 5 min");
        assert_eq!(age(7_200_000), "2 h");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3 d 4 h");
        assert_eq!(age(-2_000), "in 2 s");
        assert_eq!(age(i64::MIN), format!("in {}", age(i64::MAX)));
    }

    #[test]
    fn errors_read_once() {
        let io = std::io::Error::new(ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(io).context("cannot connect to Redis at redis://h:1");
        assert_eq!(
            error_text(&e),
            "cannot connect to Redis at redis://h:1: Connection refused"
        );
        let repeated = anyhow::anyhow!("refused")
            .context("refused")
            .context("connecting");
        assert_eq!(error_text(&repeated), "connecting: refused");
    }

    #[test]
    fn numbers() {
        assert_eq!(number(Some(2.5)), "2.500");
        assert_eq!(number(None), "-");
        assert_eq!(reading(851.25), "851.25");
        assert_eq!(reading(f32::NAN), "NaN");
    }
}
