//! The `faults` command's arguments: a rate the workload cannot make is refused with exit
//! code 2, naming the bounds, before any server starts.

use std::process::Command;

#[test]
fn a_rate_out_of_bounds_exits_2_naming_the_bounds() {
    for rate in ["5", "200000"] {
        let out = Command::new(env!("CARGO_BIN_EXE_faults"))
            .args(["--rate", rate, "agent-kill"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("--rate") && stderr.contains("800"),
            "{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "nothing ran: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
