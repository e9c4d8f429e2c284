//! The edge agent's footprint: the footprint bench's figures, then each throughput run's
//! largest agent.

use std::fmt::Write as _;

use super::Report;

impl Report<'_> {
    /// Edge agent footprint: the footprint bench, then each throughput run's largest agent.
    pub(super) fn footprint(&self, md: &mut String) {
        let f = &self.components.footprint;
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
    }
}
