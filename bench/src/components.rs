//! The headline figures of the component benchmarks, read from their output.
//!
//! `scripts/bench.sh` runs the three component benches (bridge throughput, ingest,
//! edge-agent footprint) and saves each one's stdout; this module finds the figures the
//! report needs in those files. The benches print for people, so the parsing keys on the
//! row labels they print; a figure that is not there is an error naming the bench and the
//! row, never a guess.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Frames in the bridge bench carry 50 readings each.
pub const BRIDGE_READINGS_PER_FRAME: f64 = 50.0;

#[derive(Debug, Clone)]
pub struct BridgeFigures {
    /// msgs/s: rdkafka producing the same frames with the bridge's settings, no MQTT.
    pub kafka_ceiling: f64,
    /// msgs/s: the bridge in embedded mode (rumqttd), ack on receipt, until Kafka confirms.
    pub embedded: f64,
    /// msgs/s: client mode against Mosquitto, or why it is missing.
    pub client: Result<f64, String>,
}

#[derive(Debug, Clone)]
pub struct IngestFigures {
    /// readings/s: raw binary COPY into sensor_readings, one transaction.
    pub copy_ceiling: f64,
    /// readings/s: Store::write_batch.
    pub write_batch: f64,
    /// readings/s: Kafka → PostgreSQL + Redis + alerts, the ingester's pipeline in-process.
    pub pipeline: f64,
}

#[derive(Debug, Clone)]
pub struct FootprintFigures {
    pub rss_peak_mib: f64,
    pub pss_mib: f64,
    pub anonymous_mib: f64,
    pub cpu_pct: f64,
    pub bytes_per_reading_all: f64,
    /// None when the run had no frame of 50 readings.
    pub bytes_per_reading_50: Option<f64>,
    pub binary_mib: f64,
}

#[derive(Debug, Clone)]
pub struct Components {
    pub bridge: BridgeFigures,
    pub ingest: IngestFigures,
    pub footprint: FootprintFigures,
    /// (bench name, the command that ran it, its log file, its stdout).
    pub raw: Vec<(String, String, PathBuf, String)>,
}

impl Components {
    /// Reads `bridge.log`, `ingest.log` and `footprint.log` (and the `*.cmd` files
    /// holding the command lines) from `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let load = |name: &str| -> anyhow::Result<(String, String, PathBuf, String)> {
            let path = dir.join(format!("{name}.log"));
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "the {name} bench's output {} is missing (scripts/bench.sh writes it)",
                    path.display()
                )
            })?;
            let command = std::fs::read_to_string(dir.join(format!("{name}.cmd")))
                .unwrap_or_default()
                .trim()
                .to_owned();
            Ok((name.to_owned(), command, path, text))
        };
        let bridge = load("bridge")?;
        let ingest = load("ingest")?;
        let footprint = load("footprint")?;
        Ok(Self {
            bridge: parse_bridge(&bridge.3)
                .context("bridge throughput bench (bridge/benches/throughput.rs)")?,
            ingest: parse_ingest(&ingest.3)
                .context("ingest bench (cloud-ingester/benches/ingest.rs)")?,
            footprint: parse_footprint(&footprint.3)
                .context("footprint bench (edge-agent/benches/footprint.rs)")?,
            raw: vec![bridge, ingest, footprint],
        })
    }
}

/// `1,234,567` → 1234567.
fn plain_number(token: &str) -> Option<f64> {
    token.replace(',', "").parse().ok()
}

/// The first column after `label` on the row starting with it, or the bench's own
/// "not measured: why".
fn bridge_row(text: &str, label: &str) -> anyhow::Result<Result<f64, String>> {
    let Some(rest) = text.lines().find_map(|l| l.strip_prefix(label)) else {
        bail!("no row {label:?} in its output");
    };
    let rest = rest.trim();
    if let Some(why) = rest.strip_prefix("not measured:") {
        return Ok(Err(why.trim().to_owned()));
    }
    let first = rest.split_whitespace().next().unwrap_or("");
    match plain_number(first) {
        Some(v) => Ok(Ok(v)),
        None => bail!("row {label:?}: {first:?} is not a rate"),
    }
}

fn parse_bridge(text: &str) -> anyhow::Result<BridgeFigures> {
    let required = |label: &str| -> anyhow::Result<f64> {
        bridge_row(text, label)?.map_err(|why| anyhow::anyhow!("{label}: not measured: {why}"))
    };
    Ok(BridgeFigures {
        kafka_ceiling: required("Kafka ceiling (rdkafka, no MQTT)")?,
        embedded: required("bridge, embedded mode (rumqttd)")?,
        client: bridge_row(text, "bridge, client mode (Mosquitto)")
            .unwrap_or_else(|e| Err(format!("{e:#}"))),
    })
}

/// `228k/s`, `1.30M/s`, `950/s` → readings/s.
fn ingest_rate(token: &str) -> Option<f64> {
    let t = token.strip_suffix("/s")?;
    if let Some(m) = t.strip_suffix('M') {
        m.parse::<f64>().ok().map(|v| v * 1e6)
    } else if let Some(k) = t.strip_suffix('k') {
        k.parse::<f64>().ok().map(|v| v * 1e3)
    } else {
        t.parse().ok()
    }
}

/// The first `…/s` token on the line starting (after spaces) with `label`.
fn ingest_row(text: &str, label: &str) -> anyhow::Result<f64> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .with_context(|| format!("no row {label:?} in its output"))?;
    line.split_whitespace()
        .find_map(ingest_rate)
        .with_context(|| format!("row {label:?} has no rate: {line:?}"))
}

fn parse_ingest(text: &str) -> anyhow::Result<IngestFigures> {
    Ok(IngestFigures {
        copy_ceiling: ingest_row(text, "(a)  raw binary COPY into sensor_readings")?,
        write_batch: ingest_row(text, "(b)  Store::write_batch")?,
        pipeline: ingest_row(text, "(e)  Kafka -> PostgreSQL")?,
    })
}

/// The leading number of the "measured" cell of the markdown row `| label | … |`.
fn footprint_cell(text: &str, label: &str) -> anyhow::Result<Option<f64>> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .with_context(|| format!("no row {label:?} in its output"))?;
    let cell = line.split('|').nth(2).unwrap_or("").trim();
    Ok(cell.split_whitespace().next().and_then(|t| t.parse().ok()))
}

fn parse_footprint(text: &str) -> anyhow::Result<FootprintFigures> {
    let required = |label: &str| -> anyhow::Result<f64> {
        footprint_cell(text, label)?.with_context(|| format!("row {label:?} has no number"))
    };
    Ok(FootprintFigures {
        rss_peak_mib: required("RSS, peak over the run (VmHWM)")?,
        pss_mib: required("PSS (shared library pages split among their users)")?,
        anonymous_mib: required("anonymous memory (heap, stack; the rest is file pages of code)")?,
        cpu_pct: required("CPU, share of one core")?,
        bytes_per_reading_all: required("wire bytes per reading, all frames")?,
        bytes_per_reading_50: footprint_cell(text, "wire bytes per reading, frames of 50")?,
        binary_mib: required("binary, x86-64, stripped")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_rows_and_missing_ones() {
        let text = "scenario  msgs/s\n\
            Kafka ceiling (rdkafka, no MQTT)        292,808   14,640,400     1.00\n\
            bridge, client mode (Mosquitto)         not measured: mosquitto missing\n\
            bridge, embedded mode (rumqttd)         150,100    7,504,981     0.51\n";
        let f = parse_bridge(text).unwrap();
        assert_eq!(f.kafka_ceiling, 292_808.0);
        assert_eq!(f.embedded, 150_100.0);
        assert_eq!(f.client, Err("mosquitto missing".to_owned()));
        assert!(parse_bridge("nothing here").is_err());
    }

    #[test]
    fn ingest_rates() {
        assert_eq!(ingest_rate("228k/s"), Some(228_000.0));
        assert_eq!(ingest_rate("1.30M/s"), Some(1_300_000.0));
        assert_eq!(ingest_rate("950/s"), Some(950.0));
        assert_eq!(ingest_rate("ceiling"), None);
        let text = "  (a)  raw binary COPY into sensor_readings, one transaction        228k/s  ceiling\n\
                    \x20 (b)  Store::write_batch,  20000 rows a batch                 185k/s\n\
                    \x20 (e)  Kafka -> PostgreSQL + Redis + alerts                  150k/s   (e)/(a) = 66%\n";
        let f = parse_ingest(text).unwrap();
        assert_eq!(f.copy_ceiling, 228_000.0);
        assert_eq!(f.write_batch, 185_000.0);
        assert_eq!(f.pipeline, 150_000.0);
        assert!(parse_ingest("(a) only").is_err());
    }

    #[test]
    fn footprint_rows() {
        let text = "| figure | measured | bar |\n\
            | RSS, peak over the run (VmHWM) | 4.62 MiB | ≤ 4 MiB |\n\
            | PSS (shared library pages split among their users) | 2.75 MiB | |\n\
            | anonymous memory (heap, stack; the rest is file pages of code) | 0.44 MiB | |\n\
            | CPU, share of one core | 0.28 % | ≤ 1 % |\n\
            | wire bytes per reading, all frames | 7.81 B (1252 readings in 59 frames) | |\n\
            | wire bytes per reading, frames of 50 | no such frames | ≤ 8 B |\n\
            | binary, x86-64, stripped | 2.80 MiB | |\n";
        let f = parse_footprint(text).unwrap();
        assert_eq!(f.rss_peak_mib, 4.62);
        assert_eq!(f.bytes_per_reading_50, None);
        assert_eq!(f.binary_mib, 2.80);
        assert!(parse_footprint("| RSS, peak over the run (VmHWM) | 4.62 MiB |").is_err());
    }
}
