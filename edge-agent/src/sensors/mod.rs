//! Sensor sources: where each channel's values come from.
//!
//! The agent samples every channel on its own period through one small trait, [`Source`],
//! so the sampling loop does not care whether a value comes from a physical model of a
//! seed machine ([`SimModel`], for tests and demos), a sysfs/hwmon file ([`FileSource`]) or
//! a command such as `vcgencmd measure_temp` ([`CommandSource`]). Which one a channel uses
//! is configuration ([`SourceConfig`]), turned into a source by [`build_source`].
//!
//! The rules every source keeps:
//! - `sample` never panics and never blocks for long (a command runs on a worker thread);
//! - a simulated source is a pure function of its seed and the sequence of `elapsed`
//!   values it is asked for, so a run can be replayed exactly;
//! - a real source that fails returns an error naming the file or program; the caller
//!   turns it into a fault reading with [`sample_or_fault`] and tries again next period,
//!   so a broken sensor never stops the agent;
//! - the physical-range check is the caller's, with the channel's configured range
//!   ([`flag_out_of_range`]), because the range belongs to the channel, not the source.

mod anomaly;
mod command;
mod config;
mod file;
mod models;
mod number;
mod sim;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use protocol::Quality;

pub use command::{CommandSource, MAX_TIMEOUT};
pub use config::{
    AnomalyConfig, AnomalyKind, CommandSourceConfig, ConfigError, FileSourceConfig, SimModel,
    SimulatedSourceConfig, SourceConfig, DEFAULT_ANOMALY_DURATION, DEFAULT_COMMAND_TIMEOUT,
};
pub use file::FileSource;
pub use number::parse_first_number;
pub use sim::{ChannelLimits, SeedChannel};

/// One value of one channel, before it gets its timestamp and sequence number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub value: f32,
    pub quality: Quality,
}

impl Sample {
    /// A plain measurement.
    pub fn new(value: f32) -> Self {
        Self {
            value,
            quality: Quality::empty(),
        }
    }

    /// The reading that stands in for a failed source: NaN, flagged as a sensor fault (the
    /// wire format accepts a non-finite value only with that flag).
    pub fn fault() -> Self {
        Self {
            value: f32::NAN,
            quality: Quality::SENSOR_FAULT,
        }
    }
}

/// A channel's source of values.
pub trait Source: Send {
    /// The channel's value at `elapsed`, the time since the agent started sampling
    /// (monotonic), NOT wall clock, so simulations are deterministic for a given seed and
    /// sampling schedule. `Ok(None)` means no reading this tick (a simulated dropout, or a
    /// command that has not finished yet). Never panics, never blocks for long.
    fn sample(&mut self, elapsed: Duration) -> Result<Option<Sample>, SourceError>;
}

impl<S: Source + ?Sized> Source for Box<S> {
    fn sample(&mut self, elapsed: Duration) -> Result<Option<Sample>, SourceError> {
        (**self).sample(elapsed)
    }
}

/// Why a real source produced no value this tick. Each variant names the file or the
/// program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("cannot read {}: {cause}", path.display())]
    ReadFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} is not a regular file (a FIFO or device could block or never end)", path.display())]
    NotARegularFile { path: PathBuf },
    #[error("{} holds no number: {excerpt:?}", path.display())]
    FileHasNoNumber { path: PathBuf, excerpt: String },
    #[error("cannot run {}: {cause}", program.display())]
    Spawn {
        program: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} failed ({status}){}", program.display(), stderr_suffix(stderr))]
    CommandFailed {
        program: PathBuf,
        status: ExitStatus,
        /// The start of what the command wrote to stderr.
        stderr: String,
    },
    #[error("{} printed no number: {excerpt:?}", program.display())]
    CommandHasNoNumber { program: PathBuf, excerpt: String },
    #[error("{} did not finish within {}, killed it", program.display(), humantime_format(*timeout))]
    CommandTimedOut { program: PathBuf, timeout: Duration },
    #[error(
        "{} is still running, or a process it started still holds its output, {} after it \
         was started; not starting another",
        program.display(),
        humantime_format(*running_for)
    )]
    CommandStuck {
        program: PathBuf,
        running_for: Duration,
    },
    #[error("cannot run {}: {reason}", program.display())]
    CommandWorker { program: PathBuf, reason: String },
    #[error("{} gave {raw}, which scales to {value}, not a finite 32-bit number", origin.display())]
    NotFinite {
        origin: PathBuf,
        raw: f64,
        value: f64,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr:?}")
    }
}

fn humantime_format(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

/// Builds the source a channel's configuration asks for.
///
/// `seed` drives a simulated source (the caller derives one per channel from the device
/// seed): the same seed and the same sequence of `elapsed` values give identical samples.
/// `period` is the channel's sampling period; anomaly injection uses it to shape drifts.
/// Real sources ignore both.
///
/// A simulated model knows its seed channel's physical range and thresholds
/// ([`SimModel::limits`]); they decide where normal operation stays and how far spikes
/// and drifts go. They are constants of the model, not of the channel configuration, so a
/// simulated channel whose configured thresholds differ still simulates the seed machine.
pub fn build_source(
    config: &SourceConfig,
    anomalies: Option<&AnomalyConfig>,
    seed: u64,
    period: Duration,
) -> Result<Box<dyn Source>, ConfigError> {
    if period.is_zero() {
        return Err(ConfigError::ZeroPeriod);
    }
    config.validate(anomalies)?;
    Ok(match config {
        SourceConfig::Simulated(sim) => Box::new(sim::Simulated::new(
            sim.model,
            anomalies.filter(|a| a.rate_per_hour > 0.0),
            seed,
            period,
        )),
        SourceConfig::File(file) => Box::new(FileSource::new(file)),
        SourceConfig::Command(command) => Box::new(CommandSource::new(command)),
    })
}

/// The caller's memory of a channel's failures, so that a broken sensor is logged once
/// when it breaks and once when it recovers, not on every tick.
#[derive(Debug)]
pub struct FaultTracker {
    label: String,
    failed_ticks: u64,
}

impl FaultTracker {
    /// `label` names the channel in the logs, e.g. `furnace-01/0`.
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            failed_ticks: 0,
        }
    }

    /// How many ticks in a row have failed; 0 while the source works.
    pub fn failed_ticks(&self) -> u64 {
        self.failed_ticks
    }
}

/// Samples `source`, turning a failure into a fault reading (NaN, `SENSOR_FAULT`) so the
/// channel keeps its cadence and the cloud sees the outage. The source is simply asked
/// again next period. The first failure of a streak is logged as a warning with its
/// error, the recovery as info with the streak's length; the ticks between are silent.
pub fn sample_or_fault<S: Source + ?Sized>(
    source: &mut S,
    elapsed: Duration,
    tracker: &mut FaultTracker,
) -> Option<Sample> {
    match source.sample(elapsed) {
        Ok(sample) => {
            if sample.is_some() && tracker.failed_ticks > 0 {
                tracing::info!(
                    channel = %tracker.label,
                    failed_ticks = tracker.failed_ticks,
                    "sensor source recovered"
                );
                tracker.failed_ticks = 0;
            }
            sample
        }
        Err(error) => {
            if tracker.failed_ticks == 0 {
                tracing::warn!(
                    channel = %tracker.label,
                    %error,
                    "sensor source failed; its readings are sent as faults and it is \
                     retried every period until it recovers"
                );
            }
            tracker.failed_ticks = tracker.failed_ticks.saturating_add(1);
            Some(Sample::fault())
        }
    }
}

/// Applies a channel's physical range: a finite value outside `range_min..=range_max` gets
/// `OUT_OF_RANGE` (the value is kept, so the cloud sees what the sensor said). A fault
/// reading is left alone; a non-finite value without the fault flag (which no source here
/// produces) gets `SENSOR_FAULT`, since it is not a measurement and the wire format
/// refuses it otherwise.
pub fn flag_out_of_range(sample: Sample, range_min: f32, range_max: f32) -> Sample {
    let mut sample = sample;
    if sample.quality.contains(Quality::SENSOR_FAULT) {
        return sample;
    }
    if !sample.value.is_finite() {
        sample.quality |= Quality::SENSOR_FAULT;
    } else if sample.value < range_min || sample.value > range_max {
        sample.quality |= Quality::OUT_OF_RANGE;
    }
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scripted(Vec<Result<Option<f32>, ()>>);

    impl Source for Scripted {
        fn sample(&mut self, _: Duration) -> Result<Option<Sample>, SourceError> {
            match self.0.remove(0) {
                Ok(v) => Ok(v.map(Sample::new)),
                Err(()) => Err(SourceError::NotARegularFile {
                    path: "/dev/null".into(),
                }),
            }
        }
    }

    #[test]
    fn faults_stand_in_for_errors_and_the_streak_is_counted() {
        let mut source: Box<dyn Source> = Box::new(Scripted(vec![
            Ok(Some(1.0)),
            Err(()),
            Err(()),
            Ok(None),
            Err(()),
            Ok(Some(2.0)),
        ]));
        let mut tracker = FaultTracker::new("test/0");
        let t = Duration::ZERO;
        assert_eq!(
            sample_or_fault(&mut source, t, &mut tracker),
            Some(Sample::new(1.0))
        );
        for expected_streak in [1, 2] {
            let s = sample_or_fault(&mut source, t, &mut tracker).unwrap();
            assert!(s.value.is_nan());
            assert_eq!(s.quality, Quality::SENSOR_FAULT);
            assert_eq!(tracker.failed_ticks(), expected_streak);
        }
        assert_eq!(sample_or_fault(&mut source, t, &mut tracker), None);
        assert_eq!(tracker.failed_ticks(), 2, "no reading is not a recovery");
        assert!(sample_or_fault(&mut source, t, &mut tracker)
            .unwrap()
            .quality
            .contains(Quality::SENSOR_FAULT));
        assert_eq!(
            sample_or_fault(&mut source, t, &mut tracker),
            Some(Sample::new(2.0))
        );
        assert_eq!(tracker.failed_ticks(), 0);
    }

    #[test]
    fn range_check() {
        let inside = flag_out_of_range(Sample::new(5.0), 0.0, 10.0);
        assert_eq!(inside.quality, Quality::empty());
        let edge = flag_out_of_range(Sample::new(10.0), 0.0, 10.0);
        assert_eq!(edge.quality, Quality::empty());
        let above = flag_out_of_range(Sample::new(10.5), 0.0, 10.0);
        assert_eq!(above.quality, Quality::OUT_OF_RANGE);
        assert_eq!(above.value, 10.5);
        let below = flag_out_of_range(
            Sample {
                value: -1.0,
                quality: Quality::SIMULATED_ANOMALY,
            },
            0.0,
            10.0,
        );
        assert_eq!(
            below.quality,
            Quality::SIMULATED_ANOMALY | Quality::OUT_OF_RANGE
        );
        let fault = flag_out_of_range(Sample::fault(), 0.0, 10.0);
        assert_eq!(fault.quality, Quality::SENSOR_FAULT);
        let inf = flag_out_of_range(Sample::new(f32::INFINITY), 0.0, 10.0);
        assert!(inf.quality.contains(Quality::SENSOR_FAULT));
    }

    #[test]
    fn build_refuses_bad_configs() {
        let sim = SourceConfig::Simulated(SimulatedSourceConfig {
            model: SimModel::Furnace,
        });
        assert_eq!(
            build_source(&sim, None, 1, Duration::ZERO).err(),
            Some(ConfigError::ZeroPeriod)
        );
        let command = SourceConfig::Command(CommandSourceConfig {
            program: "true".into(),
            args: vec![],
            timeout: Duration::from_secs(1),
            scale: 1.0,
            offset: 0.0,
        });
        let anomalies = AnomalyConfig {
            rate_per_hour: 1.0,
            kinds: AnomalyKind::all(),
            duration: Duration::from_secs(1),
        };
        assert_eq!(
            build_source(&command, Some(&anomalies), 1, Duration::from_secs(1)).err(),
            Some(ConfigError::AnomaliesOnRealSource { kind: "command" })
        );
    }
}
