//! The end-to-end sections: each hop's rate beside its ceiling, the CPU every part used
//! in the same windows, and publish → committed-row latency with how it was measured.

use std::fmt::Write as _;

use super::format::{ms, rate};
use super::Report;
use crate::components::BRIDGE_READINGS_PER_FRAME;
use crate::e2e::Throughput;
use crate::probe::POLL_INTERVAL;
use crate::procstat::CpuWindow;

impl Report<'_> {
    /// End to end: each hop's rate in each throughput run beside its ceiling.
    pub(super) fn hops(&self, md: &mut String) {
        let _ = writeln!(md, "## End to end: each hop's rate beside its ceiling\n");
        let _ = writeln!(
            md,
            "Sustained rates over a steady window of {:.0} s after {:.0} s of warm-up, all hops running at once \
             (release binaries; bridge in **embedded mode**: rumqttd in the bridge process, devices connect to it). \
             Ceilings come from the component benches run minutes earlier by the same command; they measure each \
             hop alone, with the whole machine to itself.\n",
            self.timing.window.as_secs_f64(),
            self.timing.warmup.as_secs_f64()
        );
        self.hop_table(md);
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "The PostgreSQL of the end-to-end run is a private server (testkit: `fsync=off`, default memory \
             settings); the ingest bench's ceiling was measured on the stack's server (`fsync=on`, \
             `shared_buffers=256MB`), so the two are close but not identical set-ups.\n"
        );
    }

    /// A row per hop, a column per throughput run, and the hop's ceilings.
    fn hop_table(&self, md: &mut String) {
        let c = self.components;
        let f = &c.footprint;
        let mut header = "| hop | how measured |".to_owned();
        let mut rule = "|---|---|".to_owned();
        for t in self.throughput {
            let _ = write!(header, " {} devices, readings/s |", t.workload.devices);
            rule.push_str("---:|");
        }
        header.push_str(" ceiling in this run, readings/s |");
        rule.push_str("---|");
        let _ = writeln!(md, "{header}\n{rule}");
        self.hop_row(
            md,
            "configured",
            "devices × channels ÷ period",
            &|t| rate(t.workload.configured_rate()),
            "–".to_owned(),
        );
        self.hop_row(
            md,
            "edge agents → MQTT",
            "telemetry frames seen by an MQTT subscriber on the bridge's broker",
            &|t| format!("{} ({} frames/s)", rate(t.agents_rate), rate(t.frames_rate)),
            "–".to_owned(),
        );
        self.hop_row(
            md,
            "bridge → Kafka (confirmed)",
            "`bridge_messages_produced_total` × readings a frame (msgs/s received / confirmed)",
            &|t| {
                format!(
                    "{} ({} / {} msgs/s)",
                    rate(t.bridge_readings_rate),
                    rate(t.bridge_received_rate),
                    rate(t.bridge_produced_rate)
                )
            },
            format!(
                "bridge alone, embedded: {} ({} msgs/s × 50); Kafka producer alone: {}",
                rate(c.bridge.embedded * BRIDGE_READINGS_PER_FRAME),
                rate(c.bridge.embedded),
                rate(c.bridge.kafka_ceiling * BRIDGE_READINGS_PER_FRAME)
            ),
        );
        self.hop_row(
            md,
            "ingester → PostgreSQL (committed)",
            "`ingester_readings_inserted_total`",
            &|t| rate(t.ingest_rate),
            format!(
                "raw binary COPY: {}; Store::write_batch: {}; ingester pipeline from a preloaded topic: {}",
                rate(c.ingest.copy_ceiling),
                rate(c.ingest.write_batch),
                rate(c.ingest.pipeline)
            ),
        );
        self.hop_row(
            md,
            "end to end ÷ ingest pipeline ceiling",
            "",
            &|t| format!("{:.0} %", 100.0 * t.ingest_rate / c.ingest.pipeline),
            "–".to_owned(),
        );
        self.hop_row(
            md,
            "bytes per reading on the wire",
            "MQTT payload bytes ÷ readings (probe)",
            &|t| format!("{:.2} B", t.bytes_per_reading),
            format!(
                "footprint bench (5 seed devices): {:.2} B",
                f.bytes_per_reading_all
            ),
        );
        self.hop_row(
            md,
            "totals after the agents stopped",
            "published (probe) / stored / dead-lettered",
            &|t| {
                format!(
                    "{} / {} / {:.0}{}",
                    rate(t.published_total as f64),
                    rate(t.stored_total as f64),
                    t.dead_lettered,
                    t.drain_s
                        .map_or(" (not drained in time)".to_owned(), |s| format!(
                            ", drained in {s:.0} s"
                        ))
                )
            },
            "–".to_owned(),
        );
    }

    /// One hop's row: its cell in each throughput run, then its ceiling.
    fn hop_row(
        &self,
        md: &mut String,
        hop: &str,
        how: &str,
        cell: &dyn Fn(&Throughput) -> String,
        ceiling: String,
    ) {
        let cells: Vec<String> = self.throughput.iter().map(cell).collect();
        let _ = writeln!(md, "| {hop} | {how} | {} | {ceiling} |", cells.join(" | "));
    }

    /// CPU: each part's share of the cores in every steady window.
    pub(super) fn cpu(&self, md: &mut String) {
        let m = self.machine;
        let _ = writeln!(md, "## CPU per process during the steady windows\n");
        let _ = writeln!(
            md,
            "From /proc (utime+stime of each process and its descendants, e.g. the postmaster and its backends), \
             in % of one core; the machine has {}. µs/reading = CPU time ÷ readings committed in the window.\n",
            100 * m.cores
        );
        let mut header = "| part |".to_owned();
        let mut rule = "|---|".to_owned();
        let windows = self.cpu_windows();
        for (name, _, _) in &windows {
            let _ = write!(header, " {name}: % core | µs/reading |");
            rule.push_str("---:|---:|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        let names: Vec<String> = windows
            .first()
            .map(|(_, w, _)| w.parts.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        for name in &names {
            let mut line = format!("| {name} |");
            for (_, w, r) in &windows {
                let v = w.part(name).unwrap_or(0.0);
                let _ = write!(line, " {v:.0} | {:.1} |", v / 100.0 / r.max(1.0) * 1e6);
            }
            let _ = writeln!(md, "{line}");
        }
        let mut other = "| other work on the machine |".to_owned();
        let mut busy = "| **machine busy** (steal) |".to_owned();
        for (_, w, r) in &windows {
            let _ = write!(
                other,
                " {:.0} | {:.1} |",
                w.unattributed(),
                w.unattributed() / 100.0 / r.max(1.0) * 1e6
            );
            let _ = write!(
                busy,
                " **{:.0}** ({:.0}) | {:.1} |",
                w.machine_busy,
                w.machine_steal,
                w.machine_busy / 100.0 / r.max(1.0) * 1e6
            );
        }
        let _ = writeln!(md, "{other}\n{busy}\n");
        let _ = writeln!(
            md,
            "\"Other work\" is CPU used by processes outside the pipeline (on this machine, other builds and \
             test suites may run at the same time; the figures are then lower than on an idle machine).\n"
        );
    }

    /// Latency: publish → committed row, and how it was measured.
    pub(super) fn latency(&self, md: &mut String) {
        let _ = writeln!(md, "## Latency: agent publish → committed row\n");
        let _ = writeln!(
            md,
            "| ingester batch.age | published readings/s | committed readings/s | frames timed | p50 ms | p90 ms | p99 ms | max ms | not visible within 5 s |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for l in self.latency {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                l.batch_age,
                rate(l.offered_rate),
                rate(l.ingest_rate),
                l.latency.samples,
                ms(l.latency.p50),
                ms(l.latency.p90),
                ms(l.latency.p99),
                ms(l.latency.max),
                l.latency.unseen
            );
        }
        if let Some(l) = self.latency.first() {
            let w = &l.workload;
            let per_device = (w.channels as f64) * 1000.0 / w.period_ms as f64;
            let _ = writeln!(
                md,
                "\nWorkload: {}. Each device fills a frame every {:.0} ms, and the devices of an agent sample in \
                 step, so frames reach the ingester in bursts: a batch opens with a burst and closes `batch.age` \
                 later, and most frames wait nearly the whole age. The rest (about p50 − age) is the bridge's \
                 producer linger (5 ms), Kafka, the consumer's fetch wait (up to 50 ms) and the transaction.\n",
                w.describe(),
                w.max_readings as f64 / per_device * 1000.0
            );
        }
        let _ = writeln!(
            md,
            "Method: an MQTT subscriber (QoS 0) on the bridge's broker records when each telemetry frame arrives, \
             keyed by (device, boot id, first seq), on this process's monotonic clock; a poller asks PostgreSQL every \
             {} ms which pending frames' first readings are visible (`EXISTS` on the dedup key), and takes the poll's \
             start as the moment of visibility. So a latency is over-estimated by at most one poll interval plus one \
             poll (mean poll {:.1} ms here). The arrival is the broker's delivery to the subscriber, a fraction of a \
             millisecond after the agent's publish reached it. The time a reading waits in its agent for its frame to \
             be sealed (`batch.max_readings` 50 / `batch.max_age`) is not part of publish → row. Redis is updated after \
             the commit and is not timed here. Percentiles are nearest-rank over all frames published in the window.\n",
            POLL_INTERVAL.as_millis(),
            self.latency.first().map_or(0.0, |l| l.latency.mean_poll_ms)
        );
    }
    /// Every steady window: its name, its CPU, and the readings/s committed in it.
    fn cpu_windows(&self) -> Vec<(String, &CpuWindow, f64)> {
        let mut windows: Vec<(String, &CpuWindow, f64)> = Vec::new();
        for t in self.throughput {
            windows.push((
                format!("{} devices", t.workload.devices),
                &t.cpu,
                t.ingest_rate,
            ));
        }
        for l in self.latency {
            windows.push((
                format!("latency, age {}", l.batch_age),
                &l.cpu,
                l.ingest_rate,
            ));
        }
        windows
    }
}
