//! A source that runs a command and takes the first number it prints, for sensors that
//! only a tool can read (`vcgencmd measure_temp` on a Pi, `sensors`, a vendor CLI, a
//! script).
//!
//! [`Source::sample`] is synchronous and called from the agent's async sampling loop, so
//! it must not wait for a process. Each `CommandSource` therefore owns one worker thread
//! (started on the first sample) that runs the command when asked, with a timeout, and
//! hands back the result. `sample` only exchanges messages with it:
//!
//! - it collects the result of the run it started on an earlier tick, if that run has
//!   finished, and returns it (so a value is reported one tick after it was measured);
//! - it starts the next run; at most one run is in flight, so a slow command reports
//!   `Ok(None)` on the ticks it is still running;
//! - the very first sample therefore returns `Ok(None)`.
//!
//! A run that exceeds the timeout is killed (SIGKILL to the process the agent started)
//! and reported as [`SourceError::CommandTimedOut`]. Standard `std` offers no way to kill
//! a process group, so a grandchild (e.g. the `sleep` of `sh -c 'sleep 9'`) survives the
//! kill; the worker then waits for the command's output pipe to close before it starts
//! another run, which bounds the stragglers to one process tree, and `sample` reports
//! [`SourceError::CommandStuck`] every tick meanwhile. The output kept is capped
//! ([`MAX_OUTPUT`]); the rest is read and discarded so the command never blocks on a full
//! pipe.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::file::{excerpt, scaled};
use super::{CommandSourceConfig, Sample, Source, SourceError};

/// How much of a command's stdout (and stderr) is kept; the number must start within it.
pub const MAX_OUTPUT: usize = 4096;

/// The longest timeout a command may have (longer ones are refused by the configuration
/// check and capped here).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long past its timeout a run may remain in flight before `sample` reports the
/// source as stuck instead of waiting quietly.
const STUCK_GRACE: Duration = Duration::from_secs(1);

/// What the worker needs to run the command; shared with it by value.
#[derive(Debug, Clone)]
struct Spec {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    scale: f64,
    offset: f64,
}

/// Runs a command on a worker thread every sample and reports the first number it printed
/// `× scale + offset`. See the module documentation for the timing.
#[derive(Debug)]
pub struct CommandSource {
    spec: Spec,
    worker: Option<Worker>,
    /// When the run in flight was requested.
    in_flight_since: Option<Instant>,
}

#[derive(Debug)]
struct Worker {
    requests: SyncSender<()>,
    results: Receiver<Result<f32, SourceError>>,
}

impl CommandSource {
    pub fn new(config: &CommandSourceConfig) -> Self {
        Self {
            spec: Spec {
                program: config.program.clone(),
                args: config.args.clone(),
                timeout: config.timeout,
                scale: config.scale,
                offset: config.offset,
            },
            worker: None,
            in_flight_since: None,
        }
    }

    pub fn program(&self) -> &Path {
        &self.spec.program
    }

    /// Runs the command once on the calling thread and waits for it (at most about the
    /// timeout). For tools and for callers that sample from `spawn_blocking`.
    pub fn measure_blocking(&self) -> Result<f32, SourceError> {
        let (result, pipes) = run(&self.spec);
        drop(pipes); // do not wait for stragglers here
        result
    }

    fn worker(&mut self) -> Result<&Worker, SourceError> {
        if self.worker.is_none() {
            let (requests, request_rx) = mpsc::sync_channel::<()>(1);
            let (result_tx, results) = mpsc::sync_channel(1);
            let spec = self.spec.clone();
            std::thread::Builder::new()
                .name("sensor-command".into())
                .stack_size(128 * 1024)
                .spawn(move || {
                    while request_rx.recv().is_ok() {
                        let (result, pipes) = run(&spec);
                        if result_tx.send(result).is_err() {
                            break;
                        }
                        pipes.wait_closed();
                    }
                })
                .map_err(|e| SourceError::CommandWorker {
                    program: self.spec.program.clone(),
                    reason: format!("cannot start its worker thread: {e}"),
                })?;
            self.worker = Some(Worker { requests, results });
        }
        match &self.worker {
            Some(worker) => Ok(worker),
            None => Err(SourceError::CommandWorker {
                program: self.spec.program.clone(),
                reason: "no worker thread".into(),
            }),
        }
    }
}

impl Source for CommandSource {
    fn sample(&mut self, _elapsed: Duration) -> Result<Option<Sample>, SourceError> {
        let mut finished = None;
        if let Some(since) = self.in_flight_since {
            let polled = self.worker()?.results.try_recv();
            match polled {
                Ok(result) => {
                    finished = Some(result);
                    self.in_flight_since = None;
                }
                Err(TryRecvError::Empty) => {
                    let running_for = since.elapsed();
                    if running_for > self.spec.timeout.saturating_add(STUCK_GRACE) {
                        return Err(SourceError::CommandStuck {
                            program: self.spec.program.clone(),
                            running_for,
                        });
                    }
                    return Ok(None);
                }
                Err(TryRecvError::Disconnected) => {
                    self.worker = None;
                    self.in_flight_since = None;
                    return Err(worker_gone(&self.spec.program));
                }
            }
        }
        let sent = self.worker()?.requests.try_send(());
        match sent {
            Ok(()) => self.in_flight_since = Some(Instant::now()),
            // Cannot happen with at most one request in flight; try again next tick.
            Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                self.worker = None;
                if finished.is_none() {
                    return Err(worker_gone(&self.spec.program));
                }
            }
        }
        match finished {
            None => Ok(None),
            Some(result) => result.map(|v| Some(Sample::new(v))),
        }
    }
}

fn worker_gone(program: &Path) -> SourceError {
    SourceError::CommandWorker {
        program: program.to_path_buf(),
        reason: "its worker thread ended".into(),
    }
}

/// The threads draining a run's stdout and stderr.
struct Pipes {
    readers: Vec<JoinHandle<()>>,
}

impl Pipes {
    /// Blocks until every process holding the command's output has closed it.
    fn wait_closed(self) {
        for reader in self.readers {
            // A reader cannot panic; if it did, there is nothing left to wait for.
            let _ = reader.join();
        }
    }
}

/// Runs the command once, returning its value and the threads still reading its output.
fn run(spec: &Spec) -> (Result<f32, SourceError>, Pipes) {
    let mut pipes = Pipes {
        readers: Vec::with_capacity(2),
    };
    let result = run_inner(spec, &mut pipes);
    (result, pipes)
}

fn run_inner(spec: &Spec, pipes: &mut Pipes) -> Result<f32, SourceError> {
    let program = &spec.program;
    let deadline = Instant::now() + spec.timeout.min(MAX_TIMEOUT);
    let mut child = Command::new(program)
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|cause| SourceError::Spawn {
            program: program.clone(),
            cause,
        })?;

    let stdout = spawn_reader(child.stdout.take(), pipes);
    let stderr = spawn_reader(child.stderr.take(), pipes);
    let (Ok(stdout), Ok(stderr)) = (stdout, stderr) else {
        kill(&mut child);
        return Err(SourceError::CommandWorker {
            program: program.clone(),
            reason: "cannot start a thread to read its output".into(),
        });
    };
    let timed_out = || SourceError::CommandTimedOut {
        program: program.clone(),
        timeout: spec.timeout,
    };

    // Most commands close stdout when they exit, so waiting for it costs no polling.
    let output = match stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(output) => output,
        Err(_) => {
            kill(&mut child);
            return Err(timed_out());
        }
    };
    let status = match wait_until(&mut child, deadline) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill(&mut child);
            return Err(timed_out());
        }
        Err(cause) => {
            kill(&mut child);
            return Err(SourceError::CommandWorker {
                program: program.clone(),
                reason: format!("cannot wait for it: {cause}"),
            });
        }
    };
    if !status.success() {
        let grace = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let stderr = stderr.recv_timeout(grace).unwrap_or_default();
        return Err(SourceError::CommandFailed {
            program: program.clone(),
            status,
            stderr: excerpt(&stderr),
        });
    }
    let Some(raw) = super::parse_first_number(&output) else {
        return Err(SourceError::CommandHasNoNumber {
            program: program.clone(),
            excerpt: excerpt(&output),
        });
    };
    scaled(raw, spec.scale, spec.offset, program)
}

/// Starts a thread that reads `pipe` to its end, keeping the first [`MAX_OUTPUT`] bytes,
/// and sends them when the pipe closes.
fn spawn_reader<R: Read + Send + 'static>(
    pipe: Option<R>,
    pipes: &mut Pipes,
) -> std::io::Result<Receiver<Vec<u8>>> {
    let (tx, rx) = mpsc::sync_channel(1);
    let Some(mut pipe) = pipe else {
        let _ = tx.send(Vec::new());
        return Ok(rx);
    };
    let handle = std::thread::Builder::new()
        .name("sensor-command-pipe".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut kept = Vec::new();
            let mut chunk = [0u8; 512];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = MAX_OUTPUT - kept.len();
                        kept.extend_from_slice(&chunk[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            // The receiver may be gone (timeout); nothing to do then.
            let _ = tx.send(kept);
        })?;
    pipes.readers.push(handle);
    Ok(rx)
}

/// Waits for the child to exit until `deadline`, polling with a growing interval (the
/// child has normally closed stdout already, so this is short).
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Kills the child and reaps it. Errors mean it has already exited, which is what we want.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, args: &[&str], timeout_ms: u64) -> Spec {
        Spec {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
            scale: 1.0,
            offset: 0.0,
        }
    }

    #[test]
    fn output_beyond_the_cap_is_drained() {
        // 1 MiB of output would block the command on a full pipe if nobody read it.
        let s = spec("sh", &["-c", "echo 12.5; head -c 1048576 /dev/zero"], 5000);
        let (result, pipes) = run(&s);
        pipes.wait_closed();
        assert_eq!(result.unwrap(), 12.5);
    }

    #[test]
    fn stderr_is_quoted_on_failure() {
        let s = spec("sh", &["-c", "echo broken sensor >&2; exit 3"], 5000);
        let err = run(&s).0.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SourceError::CommandFailed { .. }), "{text}");
        assert!(
            text.contains("broken sensor") && text.contains("sh"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_program_is_named() {
        let s = spec("/nonexistent/vcgencmd", &[], 1000);
        let err = run(&s).0.unwrap_err();
        assert!(matches!(err, SourceError::Spawn { .. }));
        assert!(err.to_string().contains("/nonexistent/vcgencmd"), "{err}");
    }
}
