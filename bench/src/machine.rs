//! What the report must state about where and when it was measured: the machine (CPU
//! model, cores, memory, kernel, OS), the date and the git commit. A figure without these
//! cannot be compared with the next run, so they are read once, at the start, from /proc,
//! /etc/os-release and git.

use std::process::Command;

use anyhow::Context;

/// The machine and the moment of the run.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub date_utc: String,
    pub commit: String,
}

impl Machine {
    pub fn detect() -> anyhow::Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, v)| v.trim().to_owned());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("MemTotal missing from /proc/meminfo")?;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading /proc/sys/kernel/osrelease")?
            .trim()
            .to_owned();
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| "unknown OS".to_owned());
        Ok(Self {
            cpu_model,
            cores,
            memory_gib: mem_kib / (1024.0 * 1024.0),
            kernel,
            os,
            date_utc: now_utc(),
            commit: git_commit(),
        })
    }

    pub fn one_line(&self) -> String {
        format!(
            "{}, {} cores, {:.1} GiB RAM, Linux {}, {}",
            self.cpu_model, self.cores, self.memory_gib, self.kernel, self.os
        )
    }
}

/// `YYYY-MM-DD HH:MM UTC`, from `date` (the clock of this machine is correct).
pub fn now_utc() -> String {
    date_utc("+%Y-%m-%d %H:%M UTC")
}

/// `YYYY-MM-DD HH:MM:SS UTC`: the bridge bench's heading, a run of seconds.
pub fn now_utc_seconds() -> String {
    date_utc("+%Y-%m-%d %H:%M:%S UTC")
}

fn date_utc(format: &str) -> String {
    Command::new("date")
        .args(["-u", format])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown date".to_owned())
}

/// The commit measured, with `+ uncommitted changes` when the tree is dirty.
fn git_commit() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match run(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit} + uncommitted changes")
            } else {
                commit
            }
        }
        None => "unknown (not a git checkout)".to_owned(),
    }
}
