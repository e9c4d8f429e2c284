//! Who spent the CPU during a bridge bench scenario. Per thread of this process (grouped
//! by thread name into publishers, bridge tasks, librdkafka, rumqttd, latency consumer)
//! and per named process (Mosquitto, Tansu, the shell pipeline's children): time running
//! and time runnable but waiting for a CPU, from /proc schedstat, since on 2 shared cores
//! the wait says as much as the run. The machine's share and the processes that are no
//! part of the scenario come from `procstat`'s snapshots, as in the end-to-end bench.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::procstat::{self, numeric_entries};

/// Time a thread (or the threads of a process, summed) spent running on a CPU and
/// runnable but waiting for one (/proc/.../schedstat), in ns.
#[derive(Debug, Clone, Copy, Default)]
struct Sched {
    run_ns: u64,
    wait_ns: u64,
}

impl Sched {
    fn read(path: &str) -> Option<Sched> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
        Some(Sched {
            run_ns: fields.next()??,
            wait_ns: fields.next()??,
        })
    }

    fn add(self, other: Sched) -> Sched {
        Sched {
            run_ns: self.run_ns + other.run_ns,
            wait_ns: self.wait_ns + other.wait_ns,
        }
    }

    fn since(self, before: Sched) -> Sched {
        Sched {
            run_ns: self.run_ns.saturating_sub(before.run_ns),
            wait_ns: self.wait_ns.saturating_sub(before.wait_ns),
        }
    }
}

pub(super) fn thread_ids() -> HashSet<u32> {
    numeric_entries("/proc/self/task").into_iter().collect()
}

/// Every thread of this process: (name, schedstat).
fn own_threads() -> HashMap<u32, (String, Sched)> {
    numeric_entries("/proc/self/task")
        .into_iter()
        .filter_map(|tid| {
            let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
            let sched = Sched::read(&format!("/proc/self/task/{tid}/schedstat"))?;
            Some((tid, (name.trim().to_owned(), sched)))
        })
        .collect()
}

/// All threads of another process, summed.
fn process_sched(pid: u32) -> Option<Sched> {
    let tasks = numeric_entries(&format!("/proc/{pid}/task"));
    (!tasks.is_empty()).then(|| {
        tasks
            .iter()
            .filter_map(|tid| Sched::read(&format!("/proc/{pid}/task/{tid}/schedstat")))
            .fold(Sched::default(), Sched::add)
    })
}

/// What part of the system a thread of this process belongs to.
fn thread_part(name: &str, tid: u32, probe: &HashSet<u32>) -> &'static str {
    if probe.contains(&tid) || name.starts_with("bench-latency") {
        "latency consumer"
    } else if name.starts_with("bench-publish") {
        "publishers (bench)"
    } else if name.starts_with("bench-bridge") {
        "bridge tasks"
    } else if name.starts_with("rdk:") || name.starts_with("producer poll") {
        "librdkafka producer"
    } else if name == "embedded" || name == "timer" || name.starts_with("router-") {
        "rumqttd threads"
    } else {
        "bench other"
    }
}

/// One part's share of the measured interval, in % of one core: running, and runnable
/// but waiting for a CPU (a part that runs + waits close to 100% per thread was never
/// idle: it was limited by CPU it could not get).
#[derive(Debug, Clone, Default)]
pub(super) struct Part {
    pub(super) name: String,
    pub(super) run: f64,
    pub(super) wait: f64,
}

#[derive(Debug, Clone, Default)]
pub(super) struct CpuReport {
    /// Busy share of the whole machine, % of one core (200 = both cores busy).
    pub(super) machine: f64,
    pub(super) parts: Vec<Part>,
    /// Processes that are no part of the scenario, by name, largest first.
    pub(super) others: Vec<(String, f64)>,
}

impl CpuReport {
    pub(super) fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }
}

/// CPU used by each part between `start` and `stop`.
pub(super) struct CpuWatch {
    at: Instant,
    threads: HashMap<u32, (String, Sched)>,
    processes: Vec<(String, u32, Sched)>,
    everything: procstat::Snapshot,
    probe: HashSet<u32>,
}

impl CpuWatch {
    pub(super) fn start(processes: &[(&str, u32)], probe: &HashSet<u32>) -> Self {
        CpuWatch {
            at: Instant::now(),
            threads: own_threads(),
            processes: processes
                .iter()
                .filter_map(|(name, pid)| Some((name.to_string(), *pid, process_sched(*pid)?)))
                .collect(),
            everything: procstat::Snapshot::take(),
            probe: probe.clone(),
        }
    }

    pub(super) fn stop(self) -> CpuReport {
        let wall_ns = self.at.elapsed().as_nanos().max(1) as f64;
        let mut parts: Vec<Part> = Vec::new();
        let mut add = |name: &str, used: Sched| {
            let index = match parts.iter().position(|p| p.name == name) {
                Some(index) => index,
                None => {
                    parts.push(Part {
                        name: name.to_owned(),
                        ..Part::default()
                    });
                    parts.len() - 1
                }
            };
            parts[index].run += used.run_ns as f64 / wall_ns * 100.0;
            parts[index].wait += used.wait_ns as f64 / wall_ns * 100.0;
        };
        for (tid, (name, now)) in own_threads() {
            let before = self.threads.get(&tid).map_or(Sched::default(), |(_, s)| *s);
            add(thread_part(&name, tid, &self.probe), now.since(before));
        }
        for (name, pid, before) in &self.processes {
            if let Some(now) = process_sched(*pid) {
                add(name, now.since(*before));
            }
        }
        parts.retain(|p| p.run >= 0.5);
        parts.sort_by(|a, b| b.run.total_cmp(&a.run));
        let end = procstat::Snapshot::take();
        let machine = procstat::window(&self.everything, &end, &[]);
        // Everything else that ran meanwhile (on a shared machine: other people's builds).
        let mut known: HashSet<u32> = self.processes.iter().map(|(_, pid, _)| *pid).collect();
        known.insert(std::process::id());
        let mut others = procstat::by_name(&self.everything, &end, &known);
        others.retain(|(_, v)| *v >= 2.0);
        CpuReport {
            // Stolen time counts as busy: the cores were not free for the scenario.
            machine: machine.machine_busy + machine.machine_steal,
            parts,
            others,
        }
    }
}

/// Pid of the process whose command line satisfies `matches`.
fn find_process(matches: impl Fn(&[String]) -> bool) -> Option<u32> {
    numeric_entries("/proc").into_iter().find(|pid| {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        matches(&args)
    })
}

pub(super) fn tansu_pid(brokers: &str) -> Option<u32> {
    let port = brokers.rsplit(':').next()?.to_owned();
    find_process(|args| {
        args.first().is_some_and(|a| a.ends_with("tansu"))
            && args.iter().any(|a| a.ends_with(&format!(":{port}")))
    })
}

/// The private Mosquitto on `port`: found through the `listener` line of its config file.
pub(super) fn mosquitto_pid(port: u16) -> Option<u32> {
    let listener = format!("listener {port} ");
    find_process(|args| {
        args.first().is_some_and(|a| a.ends_with("mosquitto"))
            && args.get(2).is_some_and(|conf| {
                std::fs::read_to_string(conf).is_ok_and(|text| text.contains(&listener))
            })
    })
}
