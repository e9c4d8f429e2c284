//! The report's head (what, when, where) and its first section, the bars: each bar of
//! the design brief and issues 7 and 14 with this run's figure and its verdict.

use std::fmt::Write as _;

use super::format::{ms, rate, verdict};
use super::{
    Report, BAR_CONFIRM_RATIO, BAR_CONFIRM_RSS_MIB, BAR_CONFIRM_WAIT_MS, BAR_CONFIRM_WRITES,
    BAR_COVERAGE_SHARE, BAR_P99_MS, BAR_RATE,
};

impl Report<'_> {
    /// The title, when, where and by what the figures were measured, and the chart.
    pub(super) fn heading(&self, md: &mut String) {
        let m = self.machine;
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
    }

    /// The bars: each bar of the design brief and issues 7 and 14, its figure and verdict.
    pub(super) fn bars(&self, md: &mut String) {
        let _ = writeln!(md, "## The bars\n");
        let _ = writeln!(
            md,
            "| bar (issues 7 and 14, the design brief) | measured in this run | verdict |"
        );
        let _ = writeln!(md, "|---|---:|---|");
        self.end_to_end_bars(md);
        self.component_bars(md);
        self.confirmation_bars(md);
        let _ = writeln!(md);
    }

    /// Issue 7's end-to-end bars (throughput and latency), as rows of the bars table.
    fn end_to_end_bars(&self, md: &mut String) {
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
    }

    /// The design brief's bars on the component benches, as rows of the bars table.
    fn component_bars(&self, md: &mut String) {
        let c = self.components;
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
    }

    /// Issue 14's bars, as rows of the bars table.
    fn confirmation_bars(&self, md: &mut String) {
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
        self.coverage_bar(md);
        self.agent_cost_bars(md);
    }

    /// Issue 14's bar on the ingester: what keeping the coverage table costs the write.
    fn coverage_bar(&self, md: &mut String) {
        let u = &self.components.ingest.coverage;
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
    }

    /// Issue 14's bars on the agent: the SD-card writes and the memory confirmations cost.
    fn agent_cost_bars(&self, md: &mut String) {
        let f = &self.components.footprint;
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
    }
}
