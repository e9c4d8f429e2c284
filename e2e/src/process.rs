//! One program of the pipeline as a child process that a scenario can kill, stop and
//! start again with the same command line, its output kept in a log file that is quoted
//! when the program dies unexpectedly. The child is a [`ChildGuard`]: its own process
//! group, killed when the `Process` is dropped and when the suite's process dies.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use testkit::ChildGuard;

/// How much of a log is quoted in an error.
const LOG_TAIL_BYTES: u64 = 4000;

pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<ChildGuard>,
    /// Starts so far, including the first.
    pub starts: u32,
}

impl Process {
    /// A program that is not started yet; its output goes to `{log_dir}/{name}.log`.
    pub fn new(name: &str, program: &Path, args: &[String], log_dir: &Path) -> Self {
        Self {
            name: name.to_owned(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            envs: vec![("RUST_LOG".to_owned(), "info".to_owned())],
            log: log_dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        }
    }

    /// Sets a variable in the program's environment, for this start and every restart.
    pub fn env(&mut self, key: &str, value: &str) {
        self.envs.push((key.to_owned(), value.to_owned()));
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    /// Starts the program (again), appending to its log.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            // Addresses come from the command line, never from the stack's environment
            // the suite itself runs in.
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("KAFKA_BROKERS")
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        let child = ChildGuard::spawn_logging_to(&self.name, &mut command, &self.log)
            .with_context(|| {
                format!(
                    "starting {} (log {})",
                    self.program.display(),
                    self.log.display()
                )
            })?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// SIGKILL: the process gets no chance to flush, close or say goodbye.
    pub fn kill(&mut self) -> Result<()> {
        self.take_running()?.kill();
        Ok(())
    }

    /// SIGTERM, then waits up to `patience` for a clean exit (status 0).
    pub fn terminate(&mut self, patience: Duration) -> Result<()> {
        let mut child = self.take_running()?;
        child.signal(libc::SIGTERM);
        match child.wait_timeout(patience) {
            Some(status) => self.expect_success(status),
            None => {
                child.kill();
                bail!(
                    "{} did not exit within {patience:?} of SIGTERM; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
        }
    }

    /// SIGTERM to each of `processes` at once, then waits up to `patience` (from the
    /// signal) for each to exit cleanly. One at a time, the later ones would go on
    /// working while the earlier ones stop: agents making readings the pipeline then
    /// has to drain within their own grace.
    pub fn terminate_all(processes: &mut [Process], patience: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + patience;
        let mut signalled = Vec::new();
        for process in processes.iter_mut() {
            let child = process.take_running()?;
            child.signal(libc::SIGTERM);
            signalled.push((process, child));
        }
        for (process, mut child) in signalled {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match child.wait_timeout(left) {
                Some(status) => process.expect_success(status)?,
                None => {
                    child.kill();
                    bail!(
                        "{} did not exit within {patience:?} of SIGTERM; log:\n{}",
                        process.name,
                        process.log_tail()
                    );
                }
            }
        }
        Ok(())
    }

    /// Fails, quoting the log, if the program exited on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if let Some(status) = child.try_wait() {
            self.child = None;
            bail!(
                "{} exited unexpectedly ({status}); log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The end of the log.
    pub fn log_tail(&self) -> String {
        let Ok(mut file) = File::open(&self.log) else {
            return format!("(no log at {})", self.log.display());
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let mut tail = String::new();
        let _ = file.read_to_string(&mut tail);
        tail
    }

    fn take_running(&mut self) -> Result<ChildGuard> {
        self.child
            .take()
            .with_context(|| format!("{} is not running", self.name))
    }

    fn expect_success(&self, status: ExitStatus) -> Result<()> {
        if !status.success() {
            bail!(
                "{} exited with {status} after SIGTERM; log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }
}
