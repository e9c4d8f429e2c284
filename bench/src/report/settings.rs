//! The closing sections: the settings of the run (workloads, configuration files, the
//! component benches' commands) and, as the appendix, those benches' own output.

use std::fmt::Write as _;

use super::Report;

impl Report<'_> {
    /// Settings: the run, the workloads, the configuration files and the bench commands.
    pub(super) fn settings(&self, md: &mut String) {
        let c = self.components;
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
    }

    /// Appendix: the component benches' own output.
    pub(super) fn appendix(&self, md: &mut String) {
        let c = self.components;
        let _ = writeln!(md, "## Appendix: the component benches' own output\n");
        for (name, command, _, text) in &c.raw {
            let _ = writeln!(
                md,
                "<details><summary>{name}: <code>{command}</code></summary>\n\n```text\n{}\n```\n</details>\n",
                text.trim()
            );
        }
    }
}
