//! The report's text for fixed figures, compared with the text the report gave for
//! them when its writer was one function: splitting it must not change a character.

use std::path::PathBuf;

use super::*;
use crate::components::{
    BridgeFigures, CoverageUpkeep, FootprintFigures, IngestFigures, SmallBatchUpkeep,
};
use crate::deployment::Workload;
use crate::e2e::{ConfirmWait, Profile};
use crate::probe::Latency;
use crate::procstat::CpuWindow;

fn machine() -> Machine {
    Machine {
        cpu_model: "Example CPU @ 2.0GHz".to_owned(),
        cores: 2,
        memory_gib: 7.8,
        kernel: "6.1.0".to_owned(),
        os: "Debian GNU/Linux 12 (bookworm)".to_owned(),
        date_utc: "2026-12-04 11:00 UTC".to_owned(),
        commit: "0123456789ab".to_owned(),
    }
}

fn cpu(parts: &[(&str, f64)], busy: f64, steal: f64) -> CpuWindow {
    CpuWindow {
        parts: parts.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        machine_busy: busy,
        machine_steal: steal,
        seconds: 30.0,
    }
}

fn components(complete: bool) -> Components {
    Components {
        bridge: BridgeFigures {
            kafka_ceiling: 9_876.5,
            embedded: 4_321.0,
            client: if complete {
                Ok(123_456.7)
            } else {
                Err("Mosquitto not running".to_owned())
            },
        },
        ingest: IngestFigures {
            copy_ceiling: 812_345.0,
            write_batch: 601_234.0,
            pipeline: 154_321.0,
            coverage: CoverageUpkeep {
                batch: 5000,
                rate_ratio: 0.987,
                cpu_share: 0.031,
                us_per_reading: 0.12,
                cpu_extra: 0.024,
                small: complete.then_some(SmallBatchUpkeep {
                    batch: 250,
                    readings_per_row: 1,
                    rate_ratio: 0.91,
                    cpu_share: 0.072,
                }),
            },
        },
        footprint: FootprintFigures {
            rss_peak_mib: 2.61,
            pss_mib: 1.93,
            anonymous_mib: 0.71,
            cpu_pct: 0.42,
            bytes_per_reading_all: 7.31,
            bytes_per_reading_50: complete.then_some(6.02),
            binary_mib: 3.37,
            broker_rss_peak_mib: 2.55,
            written: (1_234_567.0, 1_200_000.0),
            to_storage: (409_600.0, 401_408.0),
        },
        console: complete.then(|| {
            vec![
                "(a) overview, 500 devices, 1493 channels on the page:".to_owned(),
                "- overview GET: p50 1.0 ms, p99 2.7 ms; bar p99 <= 50 ms: met".to_owned(),
            ]
        }),
        raw: vec![
            (
                "bridge".to_owned(),
                "target/release/bench bridge".to_owned(),
                PathBuf::from("target/bench/bridge.log"),
                "bridge bench output\nembedded 4,321 msgs/s\n".to_owned(),
            ),
            (
                "ingest".to_owned(),
                "cargo bench -p cloud-ingester --bench ingest".to_owned(),
                PathBuf::from("target/bench/ingest.log"),
                "\ningest bench output\n".to_owned(),
            ),
        ],
    }
}

/// A throughput run whose hops passed on the given shares of the configured rate, with
/// the ingest loop (ingester, PostgreSQL) using the given % of a core.
fn throughput(
    w: &Workload,
    (published, bridged, committed): (f64, f64, f64),
    (ingester, postgres): (f64, f64),
    complete: bool,
) -> Throughput {
    let configured = w.configured_rate();
    Throughput {
        workload: w.clone(),
        agents_rate: configured * published,
        frames_rate: configured * published / 50.0,
        bytes_per_reading: 7.456,
        bridge_received_rate: configured * bridged * 1.01 / 50.0,
        bridge_produced_rate: configured * bridged / 50.0,
        bridge_readings_rate: configured * bridged,
        ingest_rate: configured * committed,
        cpu: cpu(
            &[
                ("edge-agents", 41.0),
                ("bridge", 37.5),
                ("cloud-ingester", ingester),
                ("PostgreSQL", postgres),
            ],
            191.0,
            1.5,
        ),
        agent_rss_kib: 3_210,
        published_total: 3_456_789,
        stored_total: 3_456_000,
        dead_lettered: 0.0,
        drain_s: complete.then_some(12.4),
        perf: complete.then(|| Profile {
            command: "perf record -a -g -- sleep 30".to_owned(),
            by_command: vec![
                "    41.20%  swapper".to_owned(),
                "    30.10%  cloud-ingester".to_owned(),
            ],
            by_symbol: vec![
                "    20.00%  swapper  [kernel]  intel_idle".to_owned(),
                "     9.50%  cloud-ingester  cloud-ingester  RuleBook::get".to_owned(),
                "     4.25%  cloud-ingester  cloud-ingester  hash_one".to_owned(),
                "     3.00%  postgres  postgres  ExecInsert".to_owned(),
            ],
        }),
    }
}

fn latency_run(w: &Workload, batch_age: &str, p99: f64, confirm_p99: Option<u64>) -> LatencyRun {
    LatencyRun {
        workload: w.clone(),
        batch_age: batch_age.to_owned(),
        offered_rate: 9_987.6,
        ingest_rate: 9_950.2,
        latency: Latency {
            samples: 11_980,
            p50: p99 * 0.6,
            p90: p99 * 0.85,
            p99,
            max: p99 * 1.7,
            unseen: 0,
            mean_poll_ms: 1.84,
        },
        confirm_wait: ConfirmWait {
            gateways: 1,
            p50_ms: confirm_p99.map(|v| v / 2),
            p99_ms: confirm_p99,
            confirmed_frames: 12_000,
            awaiting_confirm: 3,
            resent_frames: 0,
        },
        cpu: cpu(&[("edge-agents", 8.0), ("cloud-ingester", 9.5)], 40.0, 0.0),
    }
}

fn render(complete: bool) -> String {
    let machine = machine();
    let timing = Timing::full();
    let components = components(complete);
    let [five, five_hundred, lat] = Workload::standard();
    // Between them the runs take every branch of the bottleneck's wording.
    let throughput = if complete {
        vec![
            // The agents fall short and the ingest loop is the bottleneck.
            throughput(&five, (0.85, 0.84, 0.70), (62.25, 33.0), true),
            // The bridge is the bottleneck.
            throughput(&five_hundred, (0.99, 0.80, 0.79), (40.0, 20.0), true),
        ]
    } else {
        vec![
            // Every hop nearly kept up, the ingest loop busiest.
            throughput(&five_hundred, (0.98, 0.97, 0.95), (60.0, 30.0), false),
            // Every hop kept up.
            throughput(&five, (0.99, 0.99, 0.99), (40.0, 20.0), false),
        ]
    };
    let latency = vec![
        latency_run(&lat, "1s", 1_012.3, Some(750)),
        latency_run(&lat, "200ms", 231.9, complete.then_some(300)),
    ];
    let broker = Throughput {
        ingest_rate: 99_001.0,
        agent_rss_kib: 3_100,
        ..throughput.first().cloned().expect("a throughput run")
    };
    let configs = vec![
        (
            "bridge.toml".to_owned(),
            "[mqtt]\nport = 1883\n\n".to_owned(),
        ),
        (
            "cloud-ingester.toml".to_owned(),
            "[batch]\nmax_rows = 5000\n".to_owned(),
        ),
    ];
    Report {
        machine: &machine,
        quick: !complete,
        timing: &timing,
        components: &components,
        throughput: &throughput,
        latency: &latency,
        broker: &broker,
        configs: &configs,
        chart_file: "benchmarks.svg",
        started: "Fri Dec  4 10:40:00 UTC 2026",
        total_minutes: 13.25,
    }
    .markdown()
}

#[test]
fn markdown_for_fixed_figures_is_unchanged() {
    assert_eq!(
        render(true),
        include_str!("../../tests/expected/report-full.md")
    );
}

#[test]
fn markdown_for_partial_figures_is_unchanged() {
    assert_eq!(
        render(false),
        include_str!("../../tests/expected/report-partial.md")
    );
}
