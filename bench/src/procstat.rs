//! CPU time per process tree, from /proc, so every throughput figure comes with who spent
//! the two cores on it. A rate alone cannot say which hop was the limit; the CPU each
//! part used over the same window (and how much of the machine was idle) can.
//!
//! A part is a set of root processes and all their descendants (PostgreSQL's postmaster
//! and its backends, say). Ticks are read at the start and the end of a window; a process
//! that started inside the window counts from zero, one that ended inside it is missed
//! (none of the measured parts start or stop inside a window).
//!
//! The bridge throughput bench (`bench bridge`) reads the same snapshots for the machine's
//! share and for "what else ran" (`by_name`); its per-thread run and wait times come from
//! schedstat, in its own `cpu` module.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone)]
struct Proc {
    /// Command name (`comm`, as in /proc/PID/stat).
    name: String,
    ppid: u32,
    ticks: u64,
}

/// Every process's CPU time and the machine's, at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    procs: HashMap<u32, Proc>,
    /// (busy, idle, steal) ticks summed over all CPUs.
    machine: (u64, u64, u64),
}

impl Snapshot {
    pub fn take() -> Self {
        let procs = numeric_entries("/proc")
            .into_iter()
            .filter_map(|pid| Some((pid, read_proc(pid)?)))
            .collect();
        Self {
            at: Instant::now(),
            procs,
            machine: machine_ticks().unwrap_or((0, 0, 0)),
        }
    }

    fn descendants(&self, roots: &[u32]) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for (pid, p) in &self.procs {
            children.entry(p.ppid).or_default().push(*pid);
        }
        let mut out = Vec::new();
        let mut stack: Vec<u32> = roots.to_vec();
        while let Some(pid) = stack.pop() {
            if out.contains(&pid) {
                continue;
            }
            out.push(pid);
            if let Some(c) = children.get(&pid) {
                stack.extend(c);
            }
        }
        out
    }
}

/// CPU used between two snapshots: per part in % of one core, and the machine's.
#[derive(Debug, Clone, Default)]
pub struct CpuWindow {
    pub parts: Vec<(String, f64)>,
    /// Machine busy time, % of one core (out of 100 × cores).
    pub machine_busy: f64,
    /// Time stolen by the hypervisor, % of one core.
    pub machine_steal: f64,
    pub seconds: f64,
}

impl CpuWindow {
    pub fn part(&self, name: &str) -> Option<f64> {
        self.parts.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// Busy time not attributed to any named part (other work on the machine).
    pub fn unattributed(&self) -> f64 {
        (self.machine_busy - self.parts.iter().map(|(_, v)| v).sum::<f64>()).max(0.0)
    }
}

/// CPU of every process in `end` but those in `skip`, summed by command name, in % of
/// one core, largest first: what else ran in the window (on a shared machine, other
/// people's builds).
pub fn by_name(start: &Snapshot, end: &Snapshot, skip: &HashSet<u32>) -> Vec<(String, f64)> {
    let seconds = end.at.duration_since(start.at).as_secs_f64().max(1e-3);
    let mut out: Vec<(String, f64)> = Vec::new();
    for (pid, p) in &end.procs {
        if skip.contains(pid) {
            continue;
        }
        let before = start.procs.get(pid).map_or(0, |b| b.ticks);
        let pct = 100.0 * p.ticks.saturating_sub(before) as f64 / TICKS_PER_SECOND / seconds;
        match out.iter_mut().find(|(n, _)| *n == p.name) {
            Some((_, v)) => *v += pct,
            None => out.push((p.name.clone(), pct)),
        }
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// `parts`: (name, root pids). Only the roots' trees in `end` are counted.
pub fn window(start: &Snapshot, end: &Snapshot, parts: &[(String, Vec<u32>)]) -> CpuWindow {
    let seconds = end.at.duration_since(start.at).as_secs_f64().max(1e-3);
    let pct = |ticks: u64| 100.0 * ticks as f64 / TICKS_PER_SECOND / seconds;
    let mut out = Vec::new();
    let mut counted: Vec<u32> = Vec::new();
    for (name, roots) in parts {
        let mut ticks = 0;
        for pid in end.descendants(roots) {
            if counted.contains(&pid) {
                continue;
            }
            counted.push(pid);
            let after = end.procs.get(&pid).map_or(0, |p| p.ticks);
            let before = start.procs.get(&pid).map_or(0, |p| p.ticks);
            ticks += after.saturating_sub(before);
        }
        out.push((name.clone(), pct(ticks)));
    }
    let (b0, _, s0) = start.machine;
    let (b1, _, s1) = end.machine;
    CpuWindow {
        parts: out,
        machine_busy: pct(b1.saturating_sub(b0)),
        machine_steal: pct(s1.saturating_sub(s0)),
        seconds,
    }
}

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, after_name) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Proc {
        name,
        ppid,
        ticks: utime + stime,
    })
}

/// The entries of `dir` named by a number: the processes in /proc, the threads in
/// /proc/PID/task.
pub fn numeric_entries(dir: &str) -> Vec<u32> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// (busy, idle, steal) from the first line of /proc/stat; iowait counts as idle.
fn machine_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let idle = get(3) + get(4);
    let steal = get(7);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    Some((busy, idle, steal))
}

/// Children of `parent` whose command name (`/proc/PID/comm`) is `comm`: how the servers
/// testkit starts as our children are found.
pub fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let snapshot = Snapshot::take();
    snapshot
        .procs
        .iter()
        .filter(|(_, p)| p.ppid == parent && p.name.starts_with(comm))
        .map(|(pid, _)| *pid)
        .collect()
}

/// Parent of a process.
pub fn parent_of(pid: u32) -> Option<u32> {
    read_proc(pid).map(|p| p.ppid)
}

/// Resident set size in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
