//! Issue 14's section: what keeping each frame until PostgreSQL committed it
//! (`delivery.confirm = "pipeline"`) cost against deleting it on the PUBACK (`"broker"`).

use std::fmt::Write as _;

use super::format::{rate, verdict};
use super::{Report, BAR_CONFIRM_RATIO, BAR_CONFIRM_RSS_MIB, BAR_CONFIRM_WAIT_MS};
use crate::e2e::Throughput;

impl Report<'_> {
    /// Confirmations: the cost of keeping each frame until PostgreSQL committed it.
    pub(super) fn confirmations(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Confirmations: `delivery.confirm = \"pipeline\"` against `\"broker\"`\n"
        );
        let Some(p) = self.throughput.first() else {
            return;
        };
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
        self.confirmation_table(md, p);
        let _ = writeln!(md);
        self.confirmation_notes(md, p);
    }

    /// The figures of issue 14 side by side, pipeline against broker, with their bars.
    fn confirmation_table(&self, md: &mut String, p: &Throughput) {
        let b = self.broker;
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
    }

    /// Where the waits, the coverage upkeep and the SD-card writes come from, and how far
    /// one run each can be trusted.
    fn confirmation_notes(&self, md: &mut String, p: &Throughput) {
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
    }
}
