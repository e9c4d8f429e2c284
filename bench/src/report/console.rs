//! The console's section (issue 17): its bench's figures as it printed them, each with
//! its bar and verdict, measured against its own peers in its own run.

use std::fmt::Write as _;

use super::Report;

impl Report<'_> {
    pub(super) fn console(&self, md: &mut String) {
        let _ = writeln!(md, "## The plant console\n");
        let Some(lines) = &self.components.console else {
            let _ = writeln!(
                md,
                "Not measured in this run (`cargo bench -p console --bench console` did not run).\n"
            );
            return;
        };
        let _ = writeln!(
            md,
            "`console/benches/console.rs`: the release console as a child process against its \
             own database (500 devices) and Redis prefix, written at 10 000 readings/s as the \
             ingester writes Redis; each figure beside a peer from the same run (method in \
             its module documentation, raw output in the appendix).\n"
        );
        for line in lines {
            if line.starts_with('(') {
                if !md.ends_with("\n\n") {
                    let _ = writeln!(md);
                }
                let _ = writeln!(md, "{line}\n");
            } else {
                let _ = writeln!(md, "{line}");
            }
        }
        let _ = writeln!(md);
    }
}
