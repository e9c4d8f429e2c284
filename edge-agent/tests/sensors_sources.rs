//! The file and command sources on real files and real processes, and how failures
//! become fault readings and out-of-range values are flagged.

use std::path::Path;
use std::time::{Duration, Instant};

use edge_agent::sensors::{
    build_source, flag_out_of_range, sample_or_fault, CommandSource, CommandSourceConfig,
    FaultTracker, FileSourceConfig, Sample, SimModel, Source, SourceConfig, SourceError,
};
use protocol::Quality;

// ---------------------------------------------------------------------------------------
// File source

fn file_source(path: &Path, scale: f64, offset: f64) -> Box<dyn Source> {
    let config = SourceConfig::File(FileSourceConfig {
        path: path.to_path_buf(),
        scale,
        offset,
    });
    build_source(&config, None, 0, Duration::from_secs(1)).unwrap()
}

#[test]
fn file_source_applies_scale_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("temp");
    std::fs::write(&path, "48312\n").unwrap();
    let value = file_source(&path, 0.001, 0.0)
        .sample(Duration::ZERO)
        .unwrap()
        .unwrap();
    assert!((value.value - 48.312).abs() < 1e-4, "{value:?}");
    assert_eq!(value.quality, Quality::empty());
    std::fs::write(&path, "in0: 1.25 V").unwrap();
    let value = file_source(&path, 2.0, -0.5)
        .sample(Duration::ZERO)
        .unwrap()
        .unwrap();
    assert_eq!(value.value, 2.0);
}

#[test]
fn file_source_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "N/A\n").unwrap();
    let err = file_source(&garbage, 1.0, 0.0)
        .sample(Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, SourceError::FileHasNoNumber { .. }), "{err}");
    assert!(
        err.to_string().contains(&*garbage.to_string_lossy()),
        "{err}"
    );
    assert!(err.to_string().contains("N/A"), "{err}");

    let missing = dir.path().join("missing");
    let err = file_source(&missing, 1.0, 0.0)
        .sample(Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, SourceError::ReadFile { .. }), "{err}");
    assert!(
        err.to_string().contains(&*missing.to_string_lossy()),
        "{err}"
    );
}

#[test]
fn the_cpu_thermal_zone_reads_as_a_temperature() {
    let path = Path::new("/sys/class/thermal/thermal_zone0/temp");
    // Every Pi has this file, and most Linux machines; a container or VM may not. Only
    // then is this case skipped, silently, because there is nothing to read.
    if !path.exists() {
        return;
    }
    let celsius = file_source(path, 0.001, 0.0)
        .sample(Duration::ZERO)
        .unwrap()
        .unwrap();
    assert!((-40.0..=125.0).contains(&celsius.value), "{celsius:?}");
}

// ---------------------------------------------------------------------------------------
// Command source

fn command_source(script: &str, timeout: Duration) -> Box<dyn Source> {
    let config = SourceConfig::Command(CommandSourceConfig {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        timeout,
        scale: 1.0,
        offset: 0.0,
    });
    build_source(&config, None, 0, Duration::from_secs(1)).unwrap()
}

/// Samples until the source reports something other than "no reading yet", and how long
/// that took.
fn first_result(source: &mut dyn Source) -> (Result<Sample, SourceError>, Duration) {
    let start = Instant::now();
    loop {
        match source.sample(start.elapsed()) {
            Ok(None) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no result in 30 s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Some(sample)) => return (Ok(sample), start.elapsed()),
            Err(err) => return (Err(err), start.elapsed()),
        }
    }
}

#[test]
fn command_source_parses_the_first_number() {
    let mut source = command_source("echo temp=48.3\\'C", Duration::from_secs(5));
    assert_eq!(
        source.sample(Duration::ZERO).unwrap(),
        None,
        "the first sample only starts the command"
    );
    let (result, _) = first_result(source.as_mut());
    assert_eq!(result.unwrap(), Sample::new(48.3));
    // It keeps working, one run per sample.
    let (again, _) = first_result(source.as_mut());
    assert_eq!(again.unwrap(), Sample::new(48.3));
}

#[test]
fn command_source_scales_and_runs_on_the_calling_thread_on_request() {
    let source = CommandSource::new(&CommandSourceConfig {
        program: "sh".into(),
        args: vec!["-c".into(), "echo 'temp=48.3'".into()],
        timeout: Duration::from_secs(5),
        scale: 10.0,
        offset: 1.0,
    });
    assert_eq!(source.measure_blocking().unwrap(), 484.0);
}

#[test]
fn command_source_failures_are_errors_naming_the_program() {
    let cases = [
        ("echo 12; exit 1", "non-zero exit"),
        ("echo no reading here", "no number"),
    ];
    for (script, what) in cases {
        let mut source = command_source(script, Duration::from_secs(5));
        let (result, _) = first_result(source.as_mut());
        let err = result.expect_err(what);
        assert!(err.to_string().contains("sh"), "{what}: {err}");
        match what {
            "non-zero exit" => assert!(matches!(err, SourceError::CommandFailed { .. }), "{err}"),
            _ => {
                assert!(
                    matches!(err, SourceError::CommandHasNoNumber { .. }),
                    "{err}"
                );
                assert!(err.to_string().contains("no reading here"), "{err}");
            }
        }
    }
    let config = SourceConfig::Command(CommandSourceConfig {
        program: "/nonexistent/vcgencmd".into(),
        args: vec![],
        timeout: Duration::from_secs(1),
        scale: 1.0,
        offset: 0.0,
    });
    let mut source = build_source(&config, None, 0, Duration::from_secs(1)).unwrap();
    let (result, _) = first_result(source.as_mut());
    let err = result.unwrap_err();
    assert!(matches!(err, SourceError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/vcgencmd"), "{err}");
}

#[test]
fn a_command_past_its_timeout_is_killed_and_reported() {
    let timeout = Duration::from_millis(300);
    // `sh` forks `sleep`, so this also covers a grandchild keeping the output pipe open.
    // The command would run for 30 s: reported well before that means the timeout
    // ended it (no tighter bound: the machine may be busy).
    let runs_for = Duration::from_secs(30);
    let mut source = command_source("sleep 30; echo 1", timeout);
    let (result, took) = first_result(source.as_mut());
    let err = result.unwrap_err();
    assert!(matches!(err, SourceError::CommandTimedOut { .. }), "{err}");
    assert!(err.to_string().contains("sh"), "{err}");
    assert!(took >= timeout, "reported after {took:?}");
    assert!(took < runs_for / 2, "reported after {took:?}");
    // Sampling never blocks while the straggler lives on.
    let start = Instant::now();
    for _ in 0..5 {
        let _ = source.sample(Duration::ZERO);
    }
    assert!(
        start.elapsed() < runs_for / 2,
        "sampling waited for the straggler"
    );
}

#[test]
fn the_timed_out_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // `exec` makes the shell itself the sleeper, so its pid is the process to be killed.
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    // Long enough for the shell to write its pid even on a loaded machine.
    let mut source = command_source(&script, Duration::from_secs(2));
    let (result, _) = first_result(source.as_mut());
    assert!(
        matches!(result, Err(SourceError::CommandTimedOut { .. })),
        "{result:?}"
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(!pid.trim().is_empty(), "the shell wrote no pid");
    let proc_dir = format!("/proc/{}", pid.trim());
    assert!(
        !Path::new(&proc_dir).exists(),
        "{proc_dir} still exists: not killed or not reaped"
    );
}

// ---------------------------------------------------------------------------------------
// Faults and ranges

#[test]
fn a_failing_source_yields_fault_readings_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hwmon_temp1_input");
    let mut source = file_source(&path, 0.001, 0.0);
    let mut tracker = FaultTracker::new("test/0");
    for tick in 1..=3 {
        let s = sample_or_fault(&mut source, Duration::from_secs(tick), &mut tracker).unwrap();
        assert!(s.value.is_nan());
        assert_eq!(s.quality, Quality::SENSOR_FAULT);
        assert_eq!(tracker.failed_ticks(), tick);
    }
    std::fs::write(&path, "41000").unwrap();
    let s = sample_or_fault(&mut source, Duration::from_secs(4), &mut tracker).unwrap();
    assert_eq!(s, Sample::new(41.0));
    assert_eq!(tracker.failed_ticks(), 0);
}

#[test]
fn readings_outside_the_physical_range_are_flagged() {
    let l = SimModel::BearingTemperature.limits();
    let hot = flag_out_of_range(Sample::new(151.0), l.range_min, l.range_max);
    assert_eq!(hot.quality, Quality::OUT_OF_RANGE);
    let fine = flag_out_of_range(Sample::new(45.0), l.range_min, l.range_max);
    assert_eq!(fine.quality, Quality::empty());
    let fault = flag_out_of_range(Sample::fault(), l.range_min, l.range_max);
    assert_eq!(fault.quality, Quality::SENSOR_FAULT);
}
