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
    /// (f): what `coverage::record` costs the write.
    pub coverage: CoverageUpkeep,
}

/// The ingest bench's (f): the same batches written without and with `coverage::record`.
#[derive(Debug, Clone, PartialEq)]
pub struct CoverageUpkeep {
    /// Rows a batch.
    pub batch: usize,
    /// (f1)/(f0): write rate with coverage against without, as a fraction.
    pub rate_ratio: f64,
    /// `coverage::record`'s share of the write's CPU (client thread + PostgreSQL backend),
    /// as a fraction.
    pub cpu_share: f64,
    /// Its CPU time, µs a reading.
    pub us_per_reading: f64,
    /// The share by difference, ((f1) − (f0)) / (f1) CPU, as a fraction (noisier).
    pub cpu_extra: f64,
    /// The same at small batches, if measured.
    pub small: Option<SmallBatchUpkeep>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmallBatchUpkeep {
    pub batch: usize,
    /// Readings of one (device, boot) in such a batch.
    pub readings_per_row: usize,
    pub rate_ratio: f64,
    pub cpu_share: f64,
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
    /// VmHWM of the same run with `delivery.confirm = "broker"` (the peer).
    pub broker_rss_peak_mib: f64,
    /// Bytes of every write call (queue, acks, MQTT socket): (pipeline, broker).
    pub written: (f64, f64),
    /// Bytes to storage (pages of the queue's files): (pipeline, broker).
    pub to_storage: (f64, f64),
}

#[derive(Debug, Clone)]
pub struct Components {
    pub bridge: BridgeFigures,
    pub ingest: IngestFigures,
    pub footprint: FootprintFigures,
    /// The console bench's figure lines (issue 17), as it printed them, if it ran.
    pub console: Option<Vec<String>>,
    /// (bench name, the command that ran it, its log file, its stdout).
    pub raw: Vec<(String, String, PathBuf, String)>,
}

impl Components {
    /// Reads `bridge.log`, `ingest.log`, `footprint.log` and, if present, `console.log`
    /// (and the `*.cmd` files holding the command lines) from `dir`.
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
        let console = load("console").ok();
        let mut raw = vec![bridge.clone(), ingest.clone(), footprint.clone()];
        raw.extend(console.clone());
        Ok(Self {
            bridge: parse_bridge(&bridge.3)
                .context("bridge throughput bench (bench bridge, bench/src/bridge_throughput/)")?,
            ingest: parse_ingest(&ingest.3)
                .context("ingest bench (cloud-ingester/benches/ingest.rs)")?,
            footprint: parse_footprint(&footprint.3)
                .context("footprint bench (edge-agent/benches/footprint.rs)")?,
            console: console.map(|(_, _, _, text)| console_lines(&text)),
            raw,
        })
    }
}

/// The console bench's section headings (`(a) …`) and figure lines (`- …`), in order.
fn console_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("- ") || l.starts_with('('))
        .map(str::to_owned)
        .collect()
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
        coverage: parse_upkeep(text)?,
    })
}

/// The number right after `marker` in `line` (sign, digits, point; `%` or anything else
/// ends it).
fn number_after(line: &str, marker: &str) -> Option<f64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let rest = rest.trim_start();
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '-' || c == '+'))))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].replace(',', "").parse().ok()
}

/// The line starting (after spaces) with `label`.
fn line_starting<'a>(text: &'a str, label: &str) -> anyhow::Result<&'a str> {
    text.lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(label))
        .with_context(|| format!("no row {label:?} in its output"))
}

/// `marker`'s number on the line starting with `label`, or an error naming both.
fn figure(text: &str, label: &str, marker: &str) -> anyhow::Result<f64> {
    let line = line_starting(text, label)?;
    number_after(line, marker).with_context(|| format!("no {marker:?} figure in {line:?}"))
}

fn parse_upkeep(text: &str) -> anyhow::Result<CoverageUpkeep> {
    const SHARE: &str = "coverage::record CPU share of (f1) =";
    let small = match text
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with("at ") && l.contains("coverage::record CPU share ="))
    {
        None => None,
        Some(line) => {
            let get = |marker: &str| {
                number_after(line, marker).with_context(|| format!("no {marker:?} in {line:?}"))
            };
            Some(SmallBatchUpkeep {
                batch: get("at ")? as usize,
                readings_per_row: get("rows a batch (")? as usize,
                rate_ratio: get("write rate =")? / 100.0,
                cpu_share: get("coverage::record CPU share =")? / 100.0,
            })
        }
    };
    Ok(CoverageUpkeep {
        batch: figure(text, "(f) coverage upkeep:", "the same batches of")? as usize,
        rate_ratio: figure(text, "(f1)/(f0) write rate =", "=")? / 100.0,
        cpu_share: figure(text, SHARE, SHARE)? / 100.0,
        us_per_reading: figure(text, SHARE, "%,")?,
        cpu_extra: figure(text, "(f1) - (f0) CPU =", "=")? / 100.0,
        small,
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
        broker_rss_peak_mib: required("peer: RSS peak with confirm = \"broker\" (VmHWM)")?,
        written: footprint_pair(text, "bytes written (write calls")?,
        to_storage: footprint_pair(text, "bytes to storage (")?,
    })
}

/// `| label… | A / B B (+x %) | … |` → (A, B): the row whose label starts with `prefix`.
fn footprint_pair(text: &str, prefix: &str) -> anyhow::Result<(f64, f64)> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("| {prefix}")))
        .with_context(|| format!("no row starting {prefix:?} in its output"))?;
    let cell = line.split('|').nth(2).unwrap_or("").trim();
    let mut tokens = cell.split_whitespace();
    let (a, slash, b) = (tokens.next(), tokens.next(), tokens.next());
    match (a.and_then(plain_number), slash, b.and_then(plain_number)) {
        (Some(a), Some("/"), Some(b)) => Ok((a, b)),
        _ => bail!("row {prefix:?}: {cell:?} is not \"A / B\""),
    }
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
        let text = format!(
            "  (a)  raw binary COPY into sensor_readings, one transaction        228k/s  ceiling\n\
             \x20 (b)  Store::write_batch,  20000 rows a batch                 185k/s\n\
             \x20 (e)  Kafka -> PostgreSQL + Redis + alerts                  150k/s   (e)/(a) = 66%\n{UPKEEP}"
        );
        let f = parse_ingest(&text).unwrap();
        assert_eq!(f.copy_ceiling, 228_000.0);
        assert_eq!(f.write_batch, 185_000.0);
        assert_eq!(f.pipeline, 150_000.0);
        assert!(parse_ingest("(a) only").is_err());
    }

    /// (f) as the ingest bench prints it.
    const UPKEEP: &str = "\n\
        (f) coverage upkeep: the same batches of 20000 rows written without and with coverage::record (2 rounds, median)\n\
        \x20 (f0) write_batch's plain statement, no coverage                165k/s   5.65 µs CPU/reading (client 0.10, PostgreSQL 5.54)\n\
        \x20 (f1) the same + coverage::record (what Store does)             171k/s   5.60 µs CPU/reading (client 0.14, PostgreSQL 5.47)\n\
        \x20 (f1)/(f0) write rate = 103.7%\n\
        \x20 coverage::record CPU share of (f1) = 2.2%, 0.124 µs/reading (client 0.033; 2.1% of (f1)'s wall time)   (bar: <= 5%)\n\
        \x20 (f1) - (f0) CPU = -0.8% of (f1)'s CPU   (the same cost by difference, noisier)\n\
        \x20 at 1000 rows a batch (50 readings per coverage row; the first 100000 readings): (f1)/(f0) write rate = 89.5%, coverage::record CPU share = 6.7% (0.509 µs/reading)\n";

    #[test]
    fn coverage_upkeep() {
        let f = parse_upkeep(UPKEEP).unwrap();
        assert_eq!(f.batch, 20_000);
        assert!((f.rate_ratio - 1.037).abs() < 1e-9);
        assert!((f.cpu_share - 0.022).abs() < 1e-9);
        assert_eq!(f.us_per_reading, 0.124);
        assert!((f.cpu_extra + 0.008).abs() < 1e-9);
        let small = f.small.unwrap();
        assert_eq!((small.batch, small.readings_per_row), (1000, 50));
        assert!((small.rate_ratio - 0.895).abs() < 1e-9);
        assert!((small.cpu_share - 0.067).abs() < 1e-9);
        // Without the small-batch line the rest still parses; without (f) it is an error.
        let no_small: String = UPKEEP
            .lines()
            .filter(|l| !l.contains("at 1000"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse_upkeep(&no_small).unwrap().small, None);
        assert!(parse_upkeep("(f1)/(f0) write rate = 99%").is_err());
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
            | binary, x86-64, stripped | 2.80 MiB | |\n\
            | peer: RSS peak with confirm = \"broker\" (VmHWM) | 4.60 MiB (pipeline -0.02 MiB) | pipeline within 0.2 MiB |\n\
            | bytes written (write calls: queue, acks file, MQTT socket), pipeline / broker | 105000 / 100000 B (+5.0 %) | |\n\
            | bytes to storage (/proc io write_bytes − cancelled_write_bytes: pages of the queue's files the SD card gets), pipeline / broker | 491520 / 483328 B (+1.7 %) | ≤ +5 % |\n";
        let f = parse_footprint(text).unwrap();
        assert_eq!(f.rss_peak_mib, 4.62);
        assert_eq!(f.bytes_per_reading_50, None);
        assert_eq!(f.binary_mib, 2.80);
        assert_eq!(f.broker_rss_peak_mib, 4.60);
        assert_eq!(f.written, (105_000.0, 100_000.0));
        assert_eq!(f.to_storage, (491_520.0, 483_328.0));
        assert!(parse_footprint("| RSS, peak over the run (VmHWM) | 4.62 MiB |").is_err());
    }
}
