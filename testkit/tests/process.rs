//! `ChildGuard` keeps its promise: no process a test starts outlives the test, whether
//! the test panics or its whole process is killed, and no child writes to the test's
//! stdout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::ChildGuard;

/// Set for the helper tests below when the outer tests run them in a child process.
const HELPER_ENV: &str = "TESTKIT_PROCESS_HELPER_FILE";

/// Whether `pid` is a live process (not gone, not a zombie waiting for its reaper).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !(state.starts_with('Z') || state.starts_with('X'))
}

/// Polls until `pid` is no longer running; false if it still runs after `within`.
fn ends_within(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while running(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Polls until `path` holds a line; panics after `within`.
fn read_when_written(path: &Path, helper: &mut ChildGuard, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().to_owned();
            }
        }
        if let Some(status) = helper.try_wait() {
            panic!("helper exited ({status}) early:\n{}", helper.log_tail());
        }
        assert!(
            Instant::now() < deadline,
            "helper wrote nothing to {} within {within:?}:\n{}",
            path.display(),
            helper.log_tail()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `text` to `path` so a reader never sees half of it.
fn publish(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// This test binary, running only the ignored helper test `helper`, which reports
/// through the file `exchange`.
fn run_helper(helper: &str, exchange: &Path) -> ChildGuard {
    ChildGuard::spawn(
        helper,
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", helper, "--ignored", "--nocapture"])
            .env(HELPER_ENV, exchange),
    )
}

fn exchange_file(purpose: &str) -> PathBuf {
    std::env::temp_dir().join(testkit::unique_name(purpose))
}

#[test]
fn a_panicking_test_leaves_no_process_behind() {
    let (pid_tx, pid_rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let sleeper = ChildGuard::spawn("sleep", Command::new("sleep").arg("600"));
        pid_tx.send(sleeper.id()).unwrap();
        panic!("the test fails while its child runs");
    });
    assert!(test.join().is_err(), "the thread panicked");
    let pid = pid_rx.recv().unwrap();
    // Killed and reaped during the unwinding: not even a zombie is left.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sleep (pid {pid}) outlived the panicking test"
    );
}

#[test]
fn a_child_dies_with_the_killed_process_that_spawned_it() {
    let exchange = exchange_file("pidfile");
    let mut helper = run_helper("helper_spawns_sleep_then_blocks", &exchange);
    let pid: u32 = read_when_written(&exchange, &mut helper, Duration::from_secs(60))
        .parse()
        .expect("the helper wrote a pid");
    let _ = std::fs::remove_file(&exchange);
    assert!(running(pid), "the helper's sleep (pid {pid}) runs");

    // SIGKILL: the helper's guard never gets to drop; only the kernel can act now.
    helper.signal(libc::SIGKILL);
    helper.wait();
    assert!(
        ends_within(pid, Duration::from_secs(10)),
        "sleep (pid {pid}) still runs 10 s after the process that spawned it was killed"
    );
}

#[test]
#[ignore = "helper: run by a_child_dies_with_the_killed_process_that_spawned_it"]
fn helper_spawns_sleep_then_blocks() {
    let Some(exchange) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let sleeper = ChildGuard::spawn("sleep", Command::new("sleep").arg("600"));
    publish(Path::new(&exchange), &format!("{}\n", sleeper.id()));
    // Until the outer test kills this process; bounded in case it never does.
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_child_spawned_by_a_thread_that_ended_keeps_running() {
    // The parent-death signal follows the spawning thread: the guard must not let a
    // short-lived thread's end kill a child the test still uses.
    let mut sleeper =
        std::thread::spawn(|| ChildGuard::spawn("sleep", Command::new("sleep").arg("600")))
            .join()
            .unwrap();
    let pid = sleeper.id();
    // Give a wrongly delivered SIGKILL time to land.
    assert!(
        !ends_within(pid, Duration::from_millis(300)),
        "sleep (pid {pid}) died when the thread that spawned it ended"
    );
    assert!(sleeper.try_wait().is_none());
    sleeper.kill();
    assert!(!running(pid));
}

#[test]
fn output_goes_to_the_log_not_to_the_test() {
    let exchange = exchange_file("logpath");
    let mut helper = run_helper("helper_runs_a_chatty_child", &exchange);
    let status = helper
        .wait_timeout(Duration::from_secs(60))
        .expect("the helper finishes");
    let helper_output = std::fs::read_to_string(helper.log_path()).unwrap();
    assert!(status.success(), "helper failed:\n{helper_output}");
    let child_log = std::fs::read_to_string(&exchange).expect("the helper wrote the log path");
    let _ = std::fs::remove_file(&exchange);
    let child_log = std::fs::read_to_string(child_log.trim()).expect("the child's log");

    for marker in ["stdout-marker", "stderr-marker"] {
        assert!(
            child_log.contains(marker),
            "{marker} missing from the child's log:\n{child_log}"
        );
        assert!(
            !helper_output.contains(marker),
            "{marker} reached the test's own output:\n{helper_output}"
        );
    }
    assert!(
        helper_output.contains("1 passed"),
        "the helper test ran:\n{helper_output}"
    );
}

#[test]
#[ignore = "helper: run by output_goes_to_the_log_not_to_the_test"]
fn helper_runs_a_chatty_child() {
    let Some(exchange) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    // The markers are assembled by the shell, so they appear nowhere in this process's
    // own arguments or messages.
    let mut chatty = ChildGuard::spawn(
        "chatty",
        Command::new("sh").args([
            "-c",
            "printf '%s-%s\\n' stdout marker; printf '%s-%s\\n' stderr marker >&2",
        ]),
    );
    assert!(chatty.wait().success());
    publish(
        Path::new(&exchange),
        &format!("{}\n", chatty.log_path().display()),
    );
}

#[test]
fn terminate_kill_and_the_log_tail() {
    let mut child = ChildGuard::spawn(
        "trapper",
        Command::new("sh").args([
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo started; while :; do sleep 0.05; done",
        ]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !child.log_tail().contains("started") {
        assert!(
            Instant::now() < deadline,
            "never started: {}",
            child.log_tail()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.terminate(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3));
    assert!(
        child.log_tail().ends_with("got-term\n"),
        "{}",
        child.log_tail()
    );
    assert!(
        child
            .log_path()
            .starts_with(std::env::current_exe().unwrap().ancestors().nth(3).unwrap()),
        "the log is under the target directory: {}",
        child.log_path().display()
    );

    // A grandchild in the group goes with the guard's kill.
    let mut parent = ChildGuard::spawn(
        "parent",
        Command::new("sh").args(["-c", "sleep 600 & echo $!; wait"]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let grandchild: u32 = loop {
        if let Ok(pid) = parent.log_tail().trim().parse() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no grandchild pid");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(running(grandchild));
    parent.kill();
    assert!(
        ends_within(grandchild, Duration::from_secs(10)),
        "the grandchild (pid {grandchild}) outlived the kill"
    );
}
