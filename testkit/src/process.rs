//! Processes a test starts, and the promise that none of them outlives the test.
//!
//! A test that panics, or a test binary that is killed, must not leave a server or a
//! pipeline binary behind: a leftover child holds whatever it inherited (a port, a data
//! directory, the pipe `scripts/test.sh` reads) and can hang the whole run. [`ChildGuard`]
//! is the one way the tests start a long-running process:
//!
//! - the child gets its own process group, and dropping the guard (also while a panic
//!   unwinds) SIGKILLs that group and reaps the child;
//! - the child has `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when the test
//!   process dies without unwinding (SIGKILL, abort, a timeout's kill);
//! - stdin is `/dev/null` and stdout and stderr are appended to a log file under
//!   `<target dir>/test-logs/`, never the test's own stdout, so no child can hold a pipe
//!   someone waits on. A guard dropped during a panic prints the end of its log.
//!
//! The parent-death signal is tied to the *thread* that forked the child, not to the
//! process: a child spawned from a short-lived thread (a `spawn_blocking` task, a helper
//! thread) would be killed when that thread ends. So every spawn goes through one
//! long-lived thread of this module, and the signal fires only when the test process
//! itself dies.
//!
//! Only the direct child gets the parent-death signal: a grandchild in the child's
//! group dies with the guard's drop, but not when the test process is SIGKILLed (unless
//! the child takes it down on its own way out).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How much of a log [`ChildGuard::log_tail`] returns.
const LOG_TAIL_BYTES: u64 = 4096;

/// A child process that dies with the test: see the [module documentation](self).
pub struct ChildGuard {
    name: String,
    child: Child,
    /// Set once the child has been reaped.
    status: Option<ExitStatus>,
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `command` as `name` (used in messages and the log's file name), its output
    /// appended to `<target dir>/test-logs/<name>-<unique>.log`. Panics with a clear
    /// message if it cannot be started: this is test set-up.
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let log = log_path(name);
        Self::spawn_logging_to(name, command, &log).unwrap_or_else(|e| {
            panic!("starting {name} ({:?}): {e}", command.get_program());
        })
    }

    /// Like [`ChildGuard::spawn`], but stdout is a pipe the caller reads
    /// ([`ChildGuard::take_stdout`]); only stderr goes to the log. For tests of what a
    /// program prints.
    pub fn spawn_capturing_stdout(name: &str, command: &mut Command) -> Self {
        let log = log_path(name);
        let started = open_log(&log).and_then(|log_file| {
            command.stdout(Stdio::piped()).stderr(log_file);
            Self::spawn_configured(name, command, log.clone())
        });
        started.unwrap_or_else(|e| panic!("starting {name} ({:?}): {e}", command.get_program()))
    }

    /// Like [`ChildGuard::spawn`], appending stdout and stderr to `log` instead, and
    /// returning the error instead of panicking: for harnesses outside `#[test]`s (the
    /// fault suite, the benchmark) that restart a program with one log.
    pub fn spawn_logging_to(name: &str, command: &mut Command, log: &Path) -> io::Result<Self> {
        let log_file = open_log(log)?;
        command.stdout(log_file.try_clone()?).stderr(log_file);
        Self::spawn_configured(name, command, log.to_path_buf())
    }

    fn spawn_configured(name: &str, command: &mut Command, log: PathBuf) -> io::Result<Self> {
        let parent = std::process::id();
        command.stdin(Stdio::null()).process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid), allocating nothing. It runs
        // after std applied `Command::uid`/`gid`, which would clear the setting.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nobody will
                // send the signal, so do not start at all.
                if u32::try_from(libc::getppid()) != Ok(parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = spawn_from_long_lived_thread(command)?;
        Ok(Self {
            name: name.to_owned(),
            child,
            status: None,
            log,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id (also its process group id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the child itself (not its group), e.g. `SIGSTOP`, `SIGTERM`.
    /// Does nothing once the child has been reaped.
    pub fn signal(&self, signal: libc::c_int) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child, which is not reaped (a zombie at worst), so
        // the pid cannot belong to another process.
        if unsafe { libc::kill(self.pid(), signal) } != 0 {
            panic!(
                "kill({}, {signal}) for {}: {}",
                self.id(),
                self.name,
                io::Error::last_os_error()
            );
        }
    }

    /// SIGKILLs the whole process group and reaps the child.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            self.kill_group();
            self.wait();
        }
    }

    /// SIGTERM, then waits up to `within` for the exit. On timeout SIGKILLs the group
    /// and panics, quoting the log.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_timeout(within) {
            Some(status) => status,
            None => {
                self.kill();
                panic!(
                    "{} did not exit within {within:?} of SIGTERM; {}",
                    self.name,
                    self.quoted_log()
                );
            }
        }
    }

    /// The exit status if the child has exited (reaping it), without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.reap(false)
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.reap(true).expect("a blocking wait returns a status")
    }

    /// Waits up to `within` for the child to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The child's stdout, once, if it was spawned with
    /// [`ChildGuard::spawn_capturing_stdout`].
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last 4 KB of the log (lossily decoded).
    pub fn log_tail(&self) -> String {
        let Ok(mut file) = File::open(&self.log) else {
            return String::new();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let mut tail = Vec::new();
        let _ = file.read_to_end(&mut tail);
        String::from_utf8_lossy(&tail).into_owned()
    }

    fn quoted_log(&self) -> String {
        format!(
            "end of its log {}:\n{}",
            self.log.display(),
            self.log_tail()
        )
    }

    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    fn kill_group(&self) {
        // SAFETY: killpg(2) has no memory effects. The group id is the pid of our child,
        // which is not reaped yet (callers guarantee it), so the id is not reused.
        unsafe {
            libc::killpg(self.pid(), libc::SIGKILL);
        }
    }

    /// Reaps the child if it exited (waiting for that if `block`). Before reaping, while
    /// the exited child still reserves its pid as the group id, SIGKILLs whatever it left
    /// in its group.
    fn reap(&mut self, block: bool) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let flags = libc::WEXITED | libc::WNOWAIT | if block { 0 } else { libc::WNOHANG };
        loop {
            // SAFETY: siginfo_t is plain data; waitid fills it in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: a valid pointer to that siginfo_t; WNOWAIT leaves the child
            // unreaped, so std's wait below still owns the reaping.
            let result = unsafe { libc::waitid(libc::P_PID, self.child.id(), &mut info, flags) };
            if result != 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("waiting for {}: {error}", self.name);
            }
            // SAFETY: waitid succeeded, so si_pid is initialised (0: nothing exited).
            if unsafe { info.si_pid() } == 0 {
                return None;
            }
            break;
        }
        self.kill_group();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {}: {e}", self.name));
        self.status = Some(status);
        self.status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill_group();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}), {}\n---",
                self.name,
                self.child.id(),
                self.quoted_log()
            );
        }
    }
}

/// Spawns on a thread that lives as long as the process, so the parent-death signal
/// means "the test process died", not "the test's thread ended". The command is moved
/// there and back.
fn spawn_from_long_lived_thread(command: &mut Command) -> io::Result<Child> {
    type Reply = mpsc::Sender<(Command, io::Result<Child>)>;
    static SPAWNER: OnceLock<mpsc::Sender<(Command, Reply)>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<(Command, Reply)>();
        std::thread::Builder::new()
            .name("testkit-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let spawned = command.spawn();
                    let _ = reply.send((command, spawned));
                }
            })
            .expect("starting the testkit spawner thread");
        requests
    });
    let (reply, replied) = mpsc::channel();
    let taken = std::mem::replace(command, Command::new(""));
    spawner
        .send((taken, reply))
        .expect("the spawner thread runs as long as the process");
    let (returned, spawned) = replied
        .recv()
        .expect("the spawner thread answers every request");
    *command = returned;
    spawned
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// `<target dir>/test-logs/<name>-<unique>.log`.
fn log_path(name: &str) -> PathBuf {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    target_dir()
        .join("test-logs")
        .join(format!("{name}-{}.log", crate::unique_hex()))
}

/// `CARGO_TARGET_DIR` if it is absolute; else derived from the running test binary
/// (`target/debug/deps/x` or `target/debug/x` -> `target`); else the temp directory.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            return dir;
        }
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let mut dir = exe.parent()?;
            if dir.file_name()? == "deps" {
                dir = dir.parent()?;
            }
            Some(dir.parent()?.to_path_buf())
        })
        .unwrap_or_else(std::env::temp_dir)
}
