//! The written report (`docs/benchmarks.md`): machine, date, commit and settings; the
//! bars with their verdicts; each hop's rate beside its ceiling from the same run; CPU per
//! process; latency; footprint; the bottleneck as the numbers show it, with the profile's
//! top entries; and the component benches' raw output as an appendix.
//!
//! Everything here is computed from the measurements handed in; the wording of the
//! bottleneck analysis is chosen by the numbers, not written in advance.

use std::fmt::Write as _;

use crate::components::{Components, BRIDGE_READINGS_PER_FRAME};
use crate::e2e::{LatencyRun, Throughput, Timing};
use crate::machine::Machine;
use crate::pipeline::Workload;

pub const BAR_RATE: f64 = 100_000.0;
pub const BAR_P99_MS: f64 = 250.0;
/// Issue 14: confirmations cost at most 5 % of the throughput, a p99 PUBACK →
/// confirmation wait of 500 ms at ~10k readings/s, and no agent RSS (0.2 MiB).
pub const BAR_CONFIRM_RATIO: f64 = 0.95;
pub const BAR_CONFIRM_WAIT_MS: u64 = 500;
pub const BAR_CONFIRM_RSS_MIB: f64 = 0.2;
/// Issue 14: coverage upkeep at most 5 % of the ingester's CPU per reading, and at most
/// 5 % more SD-card writes with confirmations than without.
pub const BAR_COVERAGE_SHARE: f64 = 0.05;
pub const BAR_CONFIRM_WRITES: f64 = 0.05;

pub struct Report<'a> {
    pub machine: &'a Machine,
    pub quick: bool,
    pub timing: &'a Timing,
    pub components: &'a Components,
    pub throughput: &'a [Throughput],
    pub latency: &'a [LatencyRun],
    /// The first throughput scenario again, with `delivery.confirm = "broker"`.
    pub broker: &'a Throughput,
    pub configs: &'a [(String, String)],
    pub chart_file: &'a str,
    pub started: &'a str,
    pub total_minutes: f64,
}

fn rate(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "–".to_owned()
    }
}

impl Report<'_> {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = self.machine;
        let c = self.components;
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "Written by `scripts/bench.sh`{} on **{}** (run started {}, {:.1} min in all), commit `{}`. \
             Regenerate it with the command; do not edit by hand.\n",
            if self.quick { " --quick" } else { "" },
            m.date_utc,
            self.started,
            self.total_minutes,
            m.commit
        );
        let _ = writeln!(
            md,
            "![throughput per hop and latency]({})\n",
            self.chart_file
        );
        let _ = writeln!(
            md,
            "**Machine:** {}, {} cores, {:.1} GiB RAM, Linux {}, {}. Every part of the pipeline, \
             the load generators and the measuring probes share these cores.\n",
            m.cpu_model, m.cores, m.memory_gib, m.kernel, m.os
        );

        // ---- Bars
        let _ = writeln!(md, "## The bars\n");
        let _ = writeln!(
            md,
            "| bar (issues 7 and 14, the design brief) | measured in this run | verdict |"
        );
        let _ = writeln!(md, "|---|---:|---|");
        for t in self.throughput {
            let _ = writeln!(
                md,
                "| end to end ≥ {} readings/s sustained, all hops at once, {} devices | {} readings/s committed | {} |",
                rate(BAR_RATE),
                t.workload.devices,
                rate(t.ingest_rate),
                verdict(t.ingest_rate >= BAR_RATE)
            );
        }
        for l in self.latency {
            let _ = writeln!(
                md,
                "| p99 ≤ {BAR_P99_MS:.0} ms publish → committed row at ~10k readings/s, ingester batch.age {} | p99 {} ms ({} readings/s) | {} |",
                l.batch_age,
                ms(l.latency.p99),
                rate(l.offered_rate),
                verdict(l.latency.p99 <= BAR_P99_MS && l.latency.unseen == 0)
            );
        }
        let f = &c.footprint;
        let e2e_bpr = self
            .throughput
            .iter()
            .map(|t| {
                format!(
                    "{:.2} B ({} devices)",
                    t.bytes_per_reading, t.workload.devices
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            md,
            "| ≤ 8 B per reading on the wire in a frame of 50 | {}; end to end {e2e_bpr} | {} |",
            f.bytes_per_reading_50.map_or(
                "footprint bench: no frame of 50 in its run".to_owned(),
                |b| format!("footprint bench {b:.2} B")
            ),
            f.bytes_per_reading_50.map_or("–", |b| verdict(b <= 8.0)),
        );
        let _ = writeln!(
            md,
            "| edge-agent ≤ 4 MiB RSS with 5 simulated devices | {:.2} MiB peak (PSS {:.2}, heap+stack {:.2}) | {} |",
            f.rss_peak_mib,
            f.pss_mib,
            f.anonymous_mib,
            verdict(f.rss_peak_mib <= 4.0)
        );
        let _ = writeln!(
            md,
            "| bridge ≥ 100k msgs/s, QoS 1, ack after Kafka, client mode | {} | {} |",
            match &c.bridge.client {
                Ok(v) => format!(
                    "{} msgs/s (embedded mode {} msgs/s)",
                    rate(*v),
                    rate(c.bridge.embedded)
                ),
                Err(why) => format!("not measured: {why}"),
            },
            match &c.bridge.client {
                Ok(v) => verdict(*v >= 100_000.0),
                Err(_) => "–",
            }
        );
        let ratio = c.ingest.write_batch / c.ingest.copy_ceiling;
        let _ = writeln!(
            md,
            "| ingest ≥ 70 % of a raw binary COPY | write_batch {} / COPY {} readings/s = {:.0} % | {} |",
            rate(c.ingest.write_batch),
            rate(c.ingest.copy_ceiling),
            100.0 * ratio,
            verdict(ratio >= 0.70)
        );
        md.push_str(&self.confirmation_bars());
        let _ = writeln!(md);

        // ---- Throughput per hop
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
        let mut header = "| hop | how measured |".to_owned();
        let mut rule = "|---|---|".to_owned();
        for t in self.throughput {
            let _ = write!(header, " {} devices, readings/s |", t.workload.devices);
            rule.push_str("---:|");
        }
        header.push_str(" ceiling in this run, readings/s |");
        rule.push_str("---|");
        let _ = writeln!(md, "{header}\n{rule}");
        let row = |md: &mut String,
                   hop: &str,
                   how: &str,
                   f: &dyn Fn(&Throughput) -> String,
                   ceiling: String| {
            let cells: Vec<String> = self.throughput.iter().map(f).collect();
            let _ = writeln!(md, "| {hop} | {how} | {} | {ceiling} |", cells.join(" | "));
        };
        row(
            &mut md,
            "configured",
            "devices × channels ÷ period",
            &|t| rate(t.workload.configured_rate()),
            "–".to_owned(),
        );
        row(
            &mut md,
            "edge agents → MQTT",
            "telemetry frames seen by an MQTT subscriber on the bridge's broker",
            &|t| format!("{} ({} frames/s)", rate(t.agents_rate), rate(t.frames_rate)),
            "–".to_owned(),
        );
        row(
            &mut md,
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
        row(
            &mut md,
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
        row(
            &mut md,
            "end to end ÷ ingest pipeline ceiling",
            "",
            &|t| format!("{:.0} %", 100.0 * t.ingest_rate / c.ingest.pipeline),
            "–".to_owned(),
        );
        row(
            &mut md,
            "bytes per reading on the wire",
            "MQTT payload bytes ÷ readings (probe)",
            &|t| format!("{:.2} B", t.bytes_per_reading),
            format!(
                "footprint bench (5 seed devices): {:.2} B",
                f.bytes_per_reading_all
            ),
        );
        row(
            &mut md,
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
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "The PostgreSQL of the end-to-end run is a private server (testkit: `fsync=off`, default memory \
             settings); the ingest bench's ceiling was measured on the stack's server (`fsync=on`, \
             `shared_buffers=256MB`), so the two are close but not identical set-ups.\n"
        );

        // ---- CPU
        let _ = writeln!(md, "## CPU per process during the steady windows\n");
        let _ = writeln!(
            md,
            "From /proc (utime+stime of each process and its descendants, e.g. the postmaster and its backends), \
             in % of one core; the machine has {}. µs/reading = CPU time ÷ readings committed in the window.\n",
            100 * m.cores
        );
        let mut header = "| part |".to_owned();
        let mut rule = "|---|".to_owned();
        let mut windows: Vec<(String, &crate::procstat::CpuWindow, f64)> = Vec::new();
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

        // ---- Latency
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
            crate::probe::POLL_INTERVAL.as_millis(),
            self.latency.first().map_or(0.0, |l| l.latency.mean_poll_ms)
        );

        md.push_str(&self.confirmations());

        // ---- Footprint
        let _ = writeln!(md, "## Edge agent footprint\n");
        let _ = writeln!(
            md,
            "From the footprint bench (5 seed devices as in `config/simulated-plant.toml`, `release-pi` build):\n"
        );
        let _ = writeln!(md, "| figure | measured | bar |\n|---|---:|---:|");
        let _ = writeln!(
            md,
            "| RSS, peak (VmHWM) | {:.2} MiB | ≤ 4 MiB |",
            f.rss_peak_mib
        );
        let _ = writeln!(md, "| PSS | {:.2} MiB | |", f.pss_mib);
        let _ = writeln!(
            md,
            "| anonymous memory (heap, stack) | {:.2} MiB | |",
            f.anonymous_mib
        );
        let _ = writeln!(
            md,
            "| CPU, share of one core | {:.2} % | ≤ 1 % |",
            f.cpu_pct
        );
        let _ = writeln!(
            md,
            "| wire bytes per reading, all frames | {:.2} B | |",
            f.bytes_per_reading_all
        );
        let _ = writeln!(
            md,
            "| wire bytes per reading, frames of 50 | {} | ≤ 8 B |",
            f.bytes_per_reading_50
                .map_or("no such frames in the run".to_owned(), |b| format!(
                    "{b:.2} B"
                ))
        );
        let _ = writeln!(
            md,
            "| binary, x86-64, stripped | {:.2} MiB | |",
            f.binary_mib
        );
        for t in self.throughput {
            let _ = writeln!(
                md,
                "| end to end, {} devices: largest agent RSS (release build; an agent has up to {} device{} × {} channels every {} ms) | {:.2} MiB | |",
                t.workload.devices,
                t.workload.devices.div_ceil(t.workload.agents.max(1)),
                if t.workload.devices.div_ceil(t.workload.agents.max(1)) == 1 { "" } else { "s" },
                t.workload.channels,
                t.workload.period_ms,
                t.agent_rss_kib as f64 / 1024.0
            );
        }
        let _ = writeln!(md);

        // ---- Bottleneck
        let _ = writeln!(md, "## Bottleneck\n");
        md.push_str(&self.bottleneck());

        // ---- Settings
        let _ = writeln!(md, "## Settings\n");
        let _ = writeln!(
            md,
            "- Run: {}; warm-up {:.0} s, throughput window {:.0} s, latency window {:.0} s.",
            if self.quick {
                "quick (smoke run)"
            } else {
                "full"
            },
            self.timing.warmup.as_secs_f64(),
            self.timing.window.as_secs_f64(),
            self.timing.latency_window.as_secs_f64()
        );
        for t in self.throughput {
            let _ = writeln!(
                md,
                "- Throughput, {}: {}.",
                t.workload.name,
                t.workload.describe()
            );
        }
        if let Some(l) = self.latency.first() {
            let _ = writeln!(md, "- Latency: {}.", l.workload.describe());
        }
        let _ = writeln!(
            md,
            "- Synthetic devices are registered in `devices`/`device_channels` (no thresholds, so no threshold alerts fire, but the alert engine still evaluates every reading for its stuck and dropout rules); \
             each channel is the simulator's `compressor_power` model, no anomalies. Channel ids ≥ 16 cost one byte \
             more per reading on the wire (the 5-device workload needs many channels per device to reach its rate, \
             since a channel samples at most every 10 ms).\n"
        );
        for (name, text) in self.configs {
            let _ = writeln!(
                md,
                "<details><summary>{name}</summary>\n\n```toml\n{}\n```\n</details>\n",
                text.trim_end()
            );
        }
        let _ = writeln!(md, "Component benches, as run by `scripts/bench.sh`:\n");
        for (name, command, path, _) in &c.raw {
            let _ = writeln!(md, "- {name}: `{command}` (output: `{}`)", path.display());
        }
        let _ = writeln!(md);

        // ---- Appendix
        let _ = writeln!(md, "## Appendix: the component benches' own output\n");
        for (name, command, _, text) in &c.raw {
            let _ = writeln!(
                md,
                "<details><summary>{name}: <code>{command}</code></summary>\n\n```text\n{}\n```\n</details>\n",
                text.trim()
            );
        }
        md
    }

    /// Issue 14's bars, as rows of the bars table.
    fn confirmation_bars(&self) -> String {
        let mut md = String::new();
        let c = self.components;
        if let Some(p) = self.throughput.first() {
            let b = self.broker;
            let ratio = p.ingest_rate / b.ingest_rate.max(f64::MIN_POSITIVE);
            let _ = writeln!(
                md,
                "| end to end with confirmations (`delivery.confirm = \"pipeline\"`) ≥ {:.0} % of the same run with `\"broker\"`, {} | {} / {} readings/s committed = {:.1} % | {} |",
                BAR_CONFIRM_RATIO * 100.0,
                p.workload.name,
                rate(p.ingest_rate),
                rate(b.ingest_rate),
                100.0 * ratio,
                verdict(ratio >= BAR_CONFIRM_RATIO)
            );
        }
        for l in self.latency {
            let w = &l.confirm_wait;
            let _ = writeln!(
                md,
                "| confirmation p99 ≤ {BAR_CONFIRM_WAIT_MS} ms (PUBACK → the agent deletes the frame) at ~10k readings/s, ingester batch.age {} | p99 {} at {} readings/s ({} frames confirmed; histogram bucket bound) | {} |",
                l.batch_age,
                w.p99_ms.map_or("not measured".to_owned(), |v| format!("≤ {v} ms")),
                rate(l.offered_rate),
                w.confirmed_frames,
                w.p99_ms.map_or("–", |v| verdict(v <= BAR_CONFIRM_WAIT_MS))
            );
        }
        let u = &c.ingest.coverage;
        let small = u.small.as_ref().map_or(String::new(), |s| {
            format!(
                "; at {}-row batches ({} readings per device and batch) {:.1} %{}",
                rate(s.batch as f64),
                s.readings_per_row,
                100.0 * s.cpu_share,
                if s.cpu_share > BAR_COVERAGE_SHARE {
                    ", over the bar"
                } else {
                    ""
                }
            )
        });
        let _ = writeln!(
            md,
            "| coverage upkeep ≤ {:.0} % of the ingester's CPU per reading | `coverage::record` {:.1} % of the write's CPU (ingester thread + PostgreSQL backend), {:.2} µs/reading, batches of {} rows; write rate with / without it {:.1} %{small} | {} |",
            BAR_COVERAGE_SHARE * 100.0,
            100.0 * u.cpu_share,
            u.us_per_reading,
            rate(u.batch as f64),
            100.0 * u.rate_ratio,
            verdict(u.cpu_share <= BAR_COVERAGE_SHARE)
        );
        let f = &c.footprint;
        let extra = |(p, b): (f64, f64)| p / b.max(1.0) - 1.0;
        let _ = writeln!(
            md,
            "| extra SD-card writes from confirmation ≤ {:.0} % of the queue's bytes written | footprint bench, bytes to storage {} / {} B, pipeline / broker: {:+.1} % (every write call, MQTT socket included: {:+.1} %) | {} |",
            BAR_CONFIRM_WRITES * 100.0,
            rate(f.to_storage.0),
            rate(f.to_storage.1),
            100.0 * extra(f.to_storage),
            100.0 * extra(f.written),
            verdict(extra(f.to_storage) <= BAR_CONFIRM_WRITES)
        );
        let footprint_delta = f.rss_peak_mib - f.broker_rss_peak_mib;
        let mut held = footprint_delta.abs() <= BAR_CONFIRM_RSS_MIB;
        let mut measured = format!(
            "footprint bench VmHWM {:.2} / {:.2} MiB, pipeline / broker ({footprint_delta:+.2})",
            f.rss_peak_mib, f.broker_rss_peak_mib
        );
        if let Some(p) = self.throughput.first() {
            let (p_rss, b_rss) = (
                p.agent_rss_kib as f64 / 1024.0,
                self.broker.agent_rss_kib as f64 / 1024.0,
            );
            held &= (p_rss - b_rss).abs() <= BAR_CONFIRM_RSS_MIB;
            let _ = write!(
                measured,
                "; end to end, {}: largest agent VmRSS {p_rss:.2} / {b_rss:.2} MiB ({:+.2})",
                p.workload.name,
                p_rss - b_rss
            );
        }
        let _ = writeln!(
            md,
            "| agent memory with confirmations unchanged within {BAR_CONFIRM_RSS_MIB} MiB RSS | {measured} | {} |",
            verdict(held)
        );
        md
    }

    /// The bottleneck, in words chosen by the numbers, plus the profile.
    /// Issue 14: the cost of keeping each frame until PostgreSQL committed it.
    fn confirmations(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## Confirmations: `delivery.confirm = \"pipeline\"` against `\"broker\"`\n"
        );
        let Some(p) = self.throughput.first() else {
            return md;
        };
        let b = self.broker;
        let _ = writeln!(
            md,
            "The {} throughput scenario ran twice in this run, the same windows, first with the agents' default \
             `delivery.confirm = \"pipeline\"` (a frame stays on disk until the ingester's confirmation, relayed \
             `sensors-confirm` → bridge → MQTT `…/<device>/confirm`) and straight after with `\"broker\"` (deleted on \
             the MQTT PUBACK, the old behaviour). Throughput is readings/s committed by the ingester \
             (`ingester_readings_inserted_total`); RSS is the largest agent's VmRSS at the end of the window. \
             The wait is the agents' own PUBACK → confirmation figure from their retained gateway status (`health`) at \
             the end of the latency window: cumulative since the agent started, and the upper bound of a histogram bucket \
             (5, 10, 20, 50, 100, 150, 200, 300, 400, 500, 750 ms, 1, 2, 5, 30 s), not an exact percentile.\n",
            p.workload.name
        );
        let ratio = if b.ingest_rate > 0.0 {
            p.ingest_rate / b.ingest_rate
        } else {
            f64::NAN
        };
        let (p_rss, b_rss) = (
            p.agent_rss_kib as f64 / 1024.0,
            b.agent_rss_kib as f64 / 1024.0,
        );
        let _ = writeln!(
            md,
            "| figure (issue 14) | pipeline | broker | bar | verdict |\n|---|---:|---:|---:|---|"
        );
        let _ = writeln!(
            md,
            "| end to end, {}: readings/s committed | {} | {} | ratio ≥ {:.0} % | {:.1} % {} |",
            p.workload.name,
            rate(p.ingest_rate),
            rate(b.ingest_rate),
            BAR_CONFIRM_RATIO * 100.0,
            ratio * 100.0,
            verdict(ratio >= BAR_CONFIRM_RATIO)
        );
        let _ = writeln!(
            md,
            "| agents published, readings/s | {} | {} | | |",
            rate(p.agents_rate),
            rate(b.agents_rate)
        );
        let _ = writeln!(
            md,
            "| largest agent RSS | {p_rss:.2} MiB | {b_rss:.2} MiB | within {BAR_CONFIRM_RSS_MIB} MiB | {:+.2} MiB {} |",
            p_rss - b_rss,
            verdict((p_rss - b_rss).abs() <= BAR_CONFIRM_RSS_MIB)
        );
        for l in self.latency {
            let w = &l.confirm_wait;
            let _ = writeln!(
                md,
                "| PUBACK → confirmation wait p99 (bucketed), {} at {} readings/s, batch.age {} | {} | – | ≤ {BAR_CONFIRM_WAIT_MS} ms | {} |",
                l.workload.name,
                rate(l.offered_rate),
                l.batch_age,
                w.p99_ms.map_or("–".to_owned(), |v| format!("≤ {v} ms")),
                w.p99_ms.map_or("not measured (no status with a figure)", |v| verdict(v <= BAR_CONFIRM_WAIT_MS))
            );
        }
        let _ = writeln!(md);
        for l in self.latency {
            let _ = writeln!(
                md,
                "- latency run, batch.age {}: {}.",
                l.batch_age,
                l.confirm_wait.describe()
            );
        }
        let u = &self.components.ingest.coverage;
        let _ = writeln!(
            md,
            "- Coverage upkeep (ingest bench, (f); its method is in the appendix): the same batches of {} rows written \
             through write_batch's plain statement without and with `coverage::record` in each batch's transaction \
             (the call `Store` makes), medians over the rounds. With it the write ran at {:.1} % of the rate without; \
             `coverage::record` took {:.1} % of the write's CPU ({:.2} µs/reading), CPU being this client thread plus \
             the connection's PostgreSQL backend from /proc/…/schedstat around each call; by the difference of the \
             two passes' CPU, {:+.1} % (noisier).{} The denominator is the write alone: the ingester's decoding, \
             validation, alert rules, Redis and Kafka work are not in it, so against all of its CPU per reading the \
             share is smaller. The statement's work follows the (device, boot) rows a batch touches rather than its \
             readings: per reading it costs most when every device has a single frame in a batch.",
            rate(u.batch as f64),
            100.0 * u.rate_ratio,
            100.0 * u.cpu_share,
            u.us_per_reading,
            100.0 * u.cpu_extra,
            u.small.as_ref().map_or(String::new(), |s| format!(
                " At {}-row batches ({} readings per device in a batch, one frame each) the share was {:.1} % \
                 and the rate {:.1} % of the rate without.",
                rate(s.batch as f64),
                s.readings_per_row,
                100.0 * s.cpu_share,
                100.0 * s.rate_ratio
            ))
        );
        let f = &self.components.footprint;
        let _ = writeln!(
            md,
            "- SD-card writes and memory (footprint bench, 5 seed devices, the same time in each mode, a subscriber \
             confirming what it receives every 200 ms as the ingester would): bytes to storage (/proc/PID/io \
             `write_bytes` less `cancelled_write_bytes`: pages of the queue's segments and acks file, which is what \
             the SD card gets) {} B with pipeline, {} B with broker ({:+.1} %); every write call, the MQTT socket \
             included (`wchar`), {} / {} B ({:+.1} %). Peak RSS (VmHWM) {:.2} MiB with pipeline, {:.2} MiB with \
             broker.",
            rate(f.to_storage.0),
            rate(f.to_storage.1),
            100.0 * (f.to_storage.0 / f.to_storage.1.max(1.0) - 1.0),
            rate(f.written.0),
            rate(f.written.1),
            100.0 * (f.written.0 / f.written.1.max(1.0) - 1.0),
            f.rss_peak_mib,
            f.broker_rss_peak_mib
        );
        let _ = writeln!(
            md,
            "- The broker run came second, on a pipeline already warm from the pipeline run; one run each, so a \
             difference of a few percent is within the run-to-run noise of this machine. The agents offer a fixed \
             rate ({} readings/s configured): when both modes keep up with it, the ratio says the confirmations cost \
             no throughput at that load, not that the ceilings are equal.\n",
            rate(p.workload.configured_rate())
        );
        md
    }

    fn bottleneck(&self) -> String {
        let mut md = String::new();
        let Some(worst) = self
            .throughput
            .iter()
            .min_by(|a, b| a.ingest_rate.total_cmp(&b.ingest_rate))
        else {
            return "No throughput run.\n\n".to_owned();
        };
        let cores = 100.0 * self.machine.cores as f64;
        for t in self.throughput {
            let w: &Workload = &t.workload;
            let total_us = t.cpu.machine_busy / 100.0 / t.ingest_rate.max(1.0) * 1e6;
            let mut parts: Vec<(String, f64)> = t.cpu.parts.clone();
            parts.push(("other work on the machine".to_owned(), t.cpu.unattributed()));
            parts.sort_by(|a, b| b.1.total_cmp(&a.1));
            let top: Vec<String> = parts
                .iter()
                .take(4)
                .map(|(n, v)| {
                    format!(
                        "{n} {v:.0} % ({:.1} µs/reading)",
                        v / 100.0 / t.ingest_rate.max(1.0) * 1e6
                    )
                })
                .collect();
            let _ = write!(
                md,
                "- **{} devices**: {} readings/s committed of {} published ({} configured). The machine was busy \
                 {:.0} % of {:.0} %{}. ",
                w.devices,
                rate(t.ingest_rate),
                rate(t.agents_rate),
                rate(w.configured_rate()),
                t.cpu.machine_busy,
                cores,
                if t.cpu.machine_busy >= 0.9 * cores {
                    " — **saturated: CPU is the limit**"
                } else {
                    ""
                }
            );
            let _ = write!(md, "Largest consumers: {}. ", top.join(", "));
            let _ = write!(
                md,
                "In all {total_us:.1} µs of machine CPU per committed reading. "
            );
            if t.agents_rate < 0.9 * w.configured_rate() {
                let _ = write!(
                    md,
                    "The agents published only {:.0} % of their configured rate (they used {:.0} % of a core in {} \
                     processes): the load generators could not offer more. ",
                    100.0 * t.agents_rate / w.configured_rate(),
                    t.cpu.part("edge-agents").unwrap_or(0.0),
                    w.agents
                );
            }
            let bridge_share = t.bridge_readings_rate / t.agents_rate.max(1.0);
            let ingest_share = t.ingest_rate / t.bridge_readings_rate.max(1.0);
            let backlog = (t.bridge_readings_rate - t.ingest_rate).max(0.0) * t.cpu.seconds;
            let _ = write!(
                md,
                "The bridge confirmed {:.1} % of what the agents published; the ingester committed {:.1} % of what \
                 the bridge put into Kafka (a backlog of about {} readings over the window, drained {} after the \
                 agents stopped). ",
                100.0 * bridge_share,
                100.0 * ingest_share,
                rate(backlog),
                t.drain_s.map_or("not within the timeout".to_owned(), |s| format!("{s:.0} s"))
            );
            let loop_busy = t.cpu.part("cloud-ingester").unwrap_or(0.0)
                + t.cpu.part("PostgreSQL").unwrap_or(0.0);
            if ingest_share < 0.9 {
                let _ = write!(
                    md,
                    "**Bottleneck: the ingest loop** (ingester + PostgreSQL, {loop_busy:.0} % of a core between them, \
                     see below); the hops before it kept up. "
                );
            } else if bridge_share < 0.9 {
                let _ = write!(md, "**Bottleneck: the bridge** (MQTT → Kafka). ");
            } else if ingest_share < 0.99 || loop_busy >= 85.0 {
                let _ = write!(
                    md,
                    "Every hop nearly kept up; the ingest loop was the busiest stage ({loop_busy:.0} % of a core), so \
                     it is the next limit. "
                );
            } else {
                let _ = write!(md, "Every hop kept up with the one before it. ");
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "The ingest loop is serial by design (consume a batch, write it in one transaction, commit, store the \
             offsets, then consume the next: nothing is consumed while a batch is written), so one ingester's rate \
             is bounded by 1 ÷ (its own CPU per reading + PostgreSQL's), whatever the other core does. In the table \
             below, \"ingest loop busy\" is the ingester's and PostgreSQL's CPU added up, in % of one core: near 100 % \
             the loop never waits for anything and is the limit.\n"
        );
        let _ = writeln!(
            md,
            "| run | ingester µs/reading | PostgreSQL µs/reading | ingest loop busy | implied ceiling of one ingester | committed |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for t in self.throughput {
            let r = t.ingest_rate.max(1.0);
            let ing = t.cpu.part("cloud-ingester").unwrap_or(0.0);
            let pg = t.cpu.part("PostgreSQL").unwrap_or(0.0);
            let us = (ing + pg) / 100.0 / r * 1e6;
            let _ = writeln!(
                md,
                "| {} devices | {:.1} | {:.1} | {:.0} % | {} readings/s | {} readings/s |",
                t.workload.devices,
                ing / 100.0 / r * 1e6,
                pg / 100.0 / r * 1e6,
                ing + pg,
                rate(1e6 / us.max(1e-3)),
                rate(t.ingest_rate)
            );
        }
        let _ = writeln!(
            md,
            "\nFor comparison, with the machine to itself the ingest bench's pipeline did {} readings/s and a raw \
             binary COPY {} readings/s (slowest run: {} devices, {} readings/s).\n",
            rate(self.components.ingest.pipeline),
            rate(self.components.ingest.copy_ceiling),
            worst.workload.devices,
            rate(worst.ingest_rate)
        );
        let profiled: Vec<(&Throughput, &crate::e2e::Profile)> = self
            .throughput
            .iter()
            .filter_map(|t| t.perf.as_ref().map(|p| (t, p)))
            .collect();
        if profiled.is_empty() {
            let _ = writeln!(
                md,
                "(No `perf` profile in this run; the /proc CPU table above is the profile.)\n"
            );
        }
        for (t, p) in profiled {
            let _ = writeln!(
                md,
                "Profile of the whole machine during the {}-device window (`{}`; `swapper` is the idle loop), top \
                 entries by process, then by process, library and symbol:\n",
                t.workload.devices, p.command
            );
            let _ = writeln!(md, "```text\n{}\n```\n", p.by_command.join("\n"));
            let _ = writeln!(md, "```text\n{}\n```\n", p.by_symbol.join("\n"));
            let hot: Vec<String> = p
                .by_symbol
                .iter()
                .filter(|l| !l.contains("swapper"))
                .take(3)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            let _ = writeln!(
                md,
                "Hottest entries outside the idle loop in the {}-device window: {}.\n",
                t.workload.devices,
                hot.iter()
                    .map(|h| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            if hot.iter().any(|h| h.contains("RuleBook::get")) {
                let _ = writeln!(
                    md,
                    "`RuleBook::get` (with the SipHash of `hash_one` beside it) is the alert engine's rule lookup. \
                     For every reading, the dropout check (`AlertEngine::step` in `cloud-ingester/src/alerts/mod.rs`) \
                     walks every other channel of the device and looks up its rules, so the ingester's cost per \
                     reading grows with the channels per device: {} here, which is why the ingester's CPU per reading \
                     differs so much between the workloads (table above).\n",
                    t.workload.channels
                );
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    //! The report's text for fixed figures, compared with the text the report gave for
    //! them when its writer was one function: splitting it must not change a character.

    use std::path::PathBuf;

    use super::*;
    use crate::components::{
        BridgeFigures, CoverageUpkeep, FootprintFigures, IngestFigures, SmallBatchUpkeep,
    };
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
            raw: vec![
                (
                    "bridge".to_owned(),
                    "cargo bench -p bridge --bench throughput".to_owned(),
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

    fn latency_run(
        w: &Workload,
        batch_age: &str,
        p99: f64,
        confirm_p99: Option<u64>,
    ) -> LatencyRun {
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
            include_str!("../tests/expected/report-full.md")
        );
    }

    #[test]
    fn markdown_for_partial_figures_is_unchanged() {
        assert_eq!(
            render(false),
            include_str!("../tests/expected/report-partial.md")
        );
    }
}
