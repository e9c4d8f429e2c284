//! The bottleneck as the numbers show it: the wording is chosen by the measured rates and
//! CPU shares, not written in advance, followed by the ingest loop's table and the profile.

use std::fmt::Write as _;

use super::format::rate;
use super::Report;
use crate::deployment::Workload;
use crate::e2e::{Profile, Throughput};

impl Report<'_> {
    /// Bottleneck, in words chosen by the numbers, plus the profile.
    pub(super) fn bottleneck(&self, md: &mut String) {
        let _ = writeln!(md, "## Bottleneck\n");
        let Some(worst) = self
            .throughput
            .iter()
            .min_by(|a, b| a.ingest_rate.total_cmp(&b.ingest_rate))
        else {
            md.push_str("No throughput run.\n\n");
            return;
        };
        for t in self.throughput {
            self.bottleneck_of_run(md, t);
        }
        let _ = writeln!(md);
        self.ingest_loop(md, worst);
        self.profiles(md);
    }

    /// One throughput run in a paragraph: where its CPU went, and which hop fell behind.
    fn bottleneck_of_run(&self, md: &mut String, t: &Throughput) {
        self.where_the_cpu_went(md, t);
        which_hop_fell_behind(md, t);
        let _ = writeln!(md);
    }

    /// The run's rates, how busy the machine was and who used it, and whether the agents
    /// offered what they were configured to.
    fn where_the_cpu_went(&self, md: &mut String, t: &Throughput) {
        let cores = 100.0 * self.machine.cores as f64;
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
    }

    /// Why one ingester's rate is bounded by its loop, each run's implied ceiling, and the
    /// ingest bench's for comparison (`worst`: the slowest run).
    fn ingest_loop(&self, md: &mut String, worst: &Throughput) {
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
    }

    /// The `perf` profiles of the throughput windows, with their hottest entries.
    fn profiles(&self, md: &mut String) {
        let profiled: Vec<(&Throughput, &Profile)> = self
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
    }
}

/// Each hop's share of what the one before it passed on, and the hop that fell behind,
/// if one did.
fn which_hop_fell_behind(md: &mut String, t: &Throughput) {
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
    let loop_busy =
        t.cpu.part("cloud-ingester").unwrap_or(0.0) + t.cpu.part("PostgreSQL").unwrap_or(0.0);
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
}
