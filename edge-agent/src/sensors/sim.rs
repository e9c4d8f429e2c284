//! The simulated source: a physical model of one seed channel, plus optional anomaly
//! injection, driven by a seeded random generator.
//!
//! This module exists so the pipeline can be run, demonstrated and tested without the
//! machines: it turns (model, seed, `elapsed`) into believable readings and knows the seed
//! channels' units, periods, ranges and thresholds (`migrations/…_seed_devices.sql`, kept
//! in step by a test that parses the migration).
//!
//! Determinism: the model draws from a ChaCha8 generator seeded with the channel seed
//! (stream 0), the anomaly injector from the same seed on stream 1, so turning anomalies
//! on or off does not change the underlying process, and the same seed with the same
//! `elapsed` sequence gives bit-identical samples. Time only ever moves forward: an
//! `elapsed` smaller than the previous one counts as no time passing.

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::anomaly::Injector;
use super::models::Model;
use super::{AnomalyConfig, Sample, SimModel, Source, SourceError};

/// A channel's physical range and alarm thresholds, as in `device_channels`. The
/// simulator keeps normal operation inside the warning band and aims spikes and drifts
/// beyond the critical thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelLimits {
    pub range_min: f32,
    pub range_max: f32,
    pub nominal: f32,
    pub warn_low: Option<f32>,
    pub warn_high: Option<f32>,
    pub crit_low: Option<f32>,
    pub crit_high: Option<f32>,
}

/// Where a simulated model comes from: its seed device and channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeedChannel {
    pub device: &'static str,
    pub channel: u8,
    pub name: &'static str,
    pub unit: &'static str,
    /// The seed's sampling period for the channel.
    pub period: Duration,
    pub limits: ChannelLimits,
}

#[allow(clippy::too_many_arguments)]
const fn seed(
    device: &'static str,
    channel: u8,
    name: &'static str,
    unit: &'static str,
    period_ms: u64,
    range: (f32, f32),
    nominal: f32,
    warn: (Option<f32>, Option<f32>),
    crit: (Option<f32>, Option<f32>),
) -> SeedChannel {
    SeedChannel {
        device,
        channel,
        name,
        unit,
        period: Duration::from_millis(period_ms),
        limits: ChannelLimits {
            range_min: range.0,
            range_max: range.1,
            nominal,
            warn_low: warn.0,
            warn_high: warn.1,
            crit_low: crit.0,
            crit_high: crit.1,
        },
    }
}

impl SimModel {
    /// Every model, in seed order.
    pub const ALL: [SimModel; 8] = [
        SimModel::Furnace,
        SimModel::SpindleVibration,
        SimModel::BearingTemperature,
        SimModel::PressPressure,
        SimModel::BoothHumidity,
        SimModel::BoothTemperature,
        SimModel::CompressorPower,
        SimModel::CompressorCurrent,
    ];

    /// The seed channel this model simulates, with its unit, period and limits.
    #[rustfmt::skip]
    pub const fn seed_channel(self) -> SeedChannel {
        match self {
            SimModel::Furnace => seed(
                "furnace-01", 0, "temperature", "°C", 1000,
                (0.0, 1400.0), 850.0,
                (Some(780.0), Some(900.0)), (Some(750.0), Some(950.0)),
            ),
            SimModel::SpindleVibration => seed(
                "cnc-spindle-01", 0, "vibration_rms", "mm/s", 100,
                (0.0, 50.0), 2.8,
                (None, Some(7.1)), (None, Some(11.2)),
            ),
            SimModel::BearingTemperature => seed(
                "cnc-spindle-01", 1, "bearing_temp", "°C", 1000,
                (-20.0, 150.0), 45.0,
                (None, Some(70.0)), (None, Some(85.0)),
            ),
            SimModel::PressPressure => seed(
                "press-01", 0, "pressure", "bar", 200,
                (0.0, 400.0), 210.0,
                (Some(150.0), Some(250.0)), (Some(120.0), Some(280.0)),
            ),
            SimModel::BoothHumidity => seed(
                "paint-booth-01", 0, "humidity", "%RH", 2000,
                (0.0, 100.0), 55.0,
                (Some(40.0), Some(70.0)), (Some(35.0), Some(75.0)),
            ),
            SimModel::BoothTemperature => seed(
                "paint-booth-01", 1, "temperature", "°C", 2000,
                (-20.0, 60.0), 22.0,
                (Some(18.0), Some(26.0)), (Some(16.0), Some(28.0)),
            ),
            SimModel::CompressorPower => seed(
                "compressor-01", 0, "active_power", "kW", 1000,
                (0.0, 150.0), 55.0,
                (None, Some(75.0)), (None, Some(90.0)),
            ),
            SimModel::CompressorCurrent => seed(
                "compressor-01", 1, "line_current", "A", 1000,
                (0.0, 300.0), 93.0,
                (None, Some(160.0)), (None, Some(190.0)),
            ),
        }
    }

    /// The seed channel's range and thresholds.
    pub const fn limits(self) -> ChannelLimits {
        self.seed_channel().limits
    }
}

/// Physics steps are capped at this much time: after a longer gap (a suspended agent)
/// the models simply continue from their settled state.
const MAX_STEP_SECS: f64 = 3600.0;

/// A [`Source`] that simulates one seed channel.
pub(crate) struct Simulated {
    model: Model,
    rng: ChaCha8Rng,
    last_secs: Option<f64>,
    injector: Option<Injector>,
}

impl Simulated {
    pub(crate) fn new(
        model: SimModel,
        anomalies: Option<&AnomalyConfig>,
        seed: u64,
        period: Duration,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let state = Model::new(model, &mut rng);
        let injector = anomalies.map(|config| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(1);
            Injector::new(config, model.limits(), period, rng)
        });
        Self {
            model: state,
            rng,
            last_secs: None,
            injector,
        }
    }
}

impl Source for Simulated {
    fn sample(&mut self, elapsed: Duration) -> Result<Option<Sample>, SourceError> {
        let now = elapsed.as_secs_f64();
        let (t, dt) = match self.last_secs {
            None => (now, 0.0),
            Some(last) => {
                let t = now.max(last);
                (t, t - last)
            }
        };
        self.last_secs = Some(t);
        let value = self.model.step(t, dt.min(MAX_STEP_SECS), &mut self.rng);
        Ok(match &mut self.injector {
            None => Some(Sample::new(value as f32)),
            Some(injector) => injector.apply(t, dt, value),
        })
    }
}
