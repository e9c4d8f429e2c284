//! The physical models behind the simulated channels, one per seed channel.
//!
//! This module exists so that simulated data looks like the machines, not like noise: a
//! furnace heats up with lag, a spindle's vibration follows its part program, a press
//! cycles per stroke, a booth's air conditioning corrects slow drift, a compressor
//! loads and unloads. Alerting, dashboards and aggregates can then be exercised on data
//! with the structure real data has. Normal operation stays inside the seed channel's
//! warning band; only the anomaly injector (`anomaly.rs`) crosses thresholds.
//!
//! Every model is a small state machine advanced by the time since its previous sample
//! (exact discretisations, or fixed sub-steps where a process has switching), with its
//! randomness drawn from the channel's seeded generator, and no allocation.
//!
//! Two devices have two channels that must agree: the spindle (vibration and bearing
//! temperature both follow the machining load) and the compressor (power and current
//! both follow the load/unload cycle). Each channel is its own source with its own seed,
//! so what they share is made a deterministic function of `elapsed` alone: the spindle
//! runs a fixed, repeating part program (as a production CNC does), and the compressor's
//! air demand is a fixed sum of slow waves driving a fixed-step receiver-pressure model.
//! The channel seeds drive only what is private to a channel (sensor noise, local
//! disturbances).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::SimModel;

type SimRng = ChaCha8Rng;

fn gauss(rng: &mut SimRng) -> f64 {
    rng.sample(StandardNormal)
}

/// An exponentially distributed wait with the given mean.
fn exp_wait(rng: &mut SimRng, mean: f64) -> f64 {
    let u: f64 = rng.random();
    -mean * (1.0 - u).ln()
}

/// First-order lag of `x` toward `target` over `dt` with time constant `tau`, exact for a
/// constant target.
fn lag(x: f64, target: f64, dt: f64, tau: f64) -> f64 {
    x + (target - x) * (1.0 - (-dt / tau).exp())
}

/// `0..1` eased at both ends.
fn smooth(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

fn lerp(a: f64, b: f64, f: f64) -> f64 {
    a + (b - a) * f
}

/// An Ornstein–Uhlenbeck process: mean-reverting noise with stationary standard deviation
/// `sigma` and correlation time `tau`, stepped exactly for any `dt`.
struct Ou {
    x: f64,
    tau: f64,
    sigma: f64,
}

impl Ou {
    /// Starts from the stationary distribution.
    fn new(tau: f64, sigma: f64, rng: &mut SimRng) -> Self {
        Self {
            x: sigma * gauss(rng),
            tau,
            sigma,
        }
    }

    fn step(&mut self, dt: f64, rng: &mut SimRng) -> f64 {
        if dt > 0.0 {
            let a = (-dt / self.tau).exp();
            self.x = a * self.x + self.sigma * (1.0 - a * a).sqrt() * gauss(rng);
        }
        self.x
    }
}

/// The state of one simulated channel.
pub(crate) enum Model {
    Furnace(Furnace),
    SpindleVibration(SpindleVibration),
    BearingTemperature(BearingTemperature),
    PressPressure(Press),
    BoothHumidity(BoothHumidity),
    BoothTemperature(BoothTemperature),
    CompressorPower(Compressor),
    CompressorCurrent(Compressor),
}

impl Model {
    pub(crate) fn new(model: SimModel, rng: &mut SimRng) -> Self {
        match model {
            SimModel::Furnace => Model::Furnace(Furnace::new(rng)),
            SimModel::SpindleVibration => Model::SpindleVibration(SpindleVibration::new(rng)),
            SimModel::BearingTemperature => Model::BearingTemperature(BearingTemperature::new(rng)),
            SimModel::PressPressure => Model::PressPressure(Press::new(rng)),
            SimModel::BoothHumidity => Model::BoothHumidity(BoothHumidity::new(rng)),
            SimModel::BoothTemperature => Model::BoothTemperature(BoothTemperature::new(rng)),
            SimModel::CompressorPower => Model::CompressorPower(Compressor::new()),
            SimModel::CompressorCurrent => Model::CompressorCurrent(Compressor::new()),
        }
    }

    /// The channel's value at time `t` (seconds since sampling started), `dt` seconds
    /// after the previous sample (0 for the first).
    pub(crate) fn step(&mut self, t: f64, dt: f64, rng: &mut SimRng) -> f64 {
        match self {
            Model::Furnace(m) => m.step(t, dt, rng),
            Model::SpindleVibration(m) => m.step(t, dt, rng),
            Model::BearingTemperature(m) => m.step(t, dt, rng),
            Model::PressPressure(m) => m.step(t, dt, rng),
            Model::BoothHumidity(m) => m.step(dt, rng),
            Model::BoothTemperature(m) => m.step(dt, rng),
            Model::CompressorPower(m) => {
                m.advance_to(t);
                m.power + 0.3 * gauss(rng)
            }
            Model::CompressorCurrent(m) => {
                m.advance_to(t);
                line_current(m.power) + 0.4 * gauss(rng)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Furnace

/// Heat-treatment furnace chamber temperature under its controller.
///
/// It starts cold (ambient) and heats toward the setpoint (850 °C). The closed loop
/// (controller + chamber) behaves like a damped second-order system (natural period about
/// 4 minutes, damping 0.8, so a few degrees of overshoot on a recipe change) whose rate is
/// limited by heater power (≤ 1.6 °C/s up) and by passive cooling (≤ 0.5 °C/s down). The
/// warm-up from ambient takes about 9–10 minutes, during which the channel is below its
/// low thresholds, as a real furnace's would be. Recipe changes move the setpoint between
/// 830 and 870 °C every 20–45 minutes. On top: slow process disturbance (loads, door
/// seals; σ 3 °C, correlation 2 min) and thermocouple noise (σ 0.7 °C).
pub(crate) struct Furnace {
    temperature: f64,
    rate: f64,
    setpoint: f64,
    next_recipe: f64,
    disturbance: Ou,
}

impl Furnace {
    pub(crate) const AMBIENT: f64 = 25.0;
    pub(crate) const SETPOINTS: [f64; 5] = [830.0, 840.0, 850.0, 860.0, 870.0];
    const HEAT_MAX: f64 = 1.6;
    const COOL_MAX: f64 = 0.5;
    const OMEGA: f64 = 0.026;
    const ZETA: f64 = 0.8;

    fn new(rng: &mut SimRng) -> Self {
        Self {
            temperature: Self::AMBIENT + 2.0 * gauss(rng),
            rate: 0.0,
            setpoint: 850.0,
            next_recipe: 1800.0 + exp_wait(rng, 900.0),
            disturbance: Ou::new(120.0, 3.0, rng),
        }
    }

    fn step(&mut self, t: f64, dt: f64, rng: &mut SimRng) -> f64 {
        if t >= self.next_recipe {
            let pick = rng.random_range(0..Self::SETPOINTS.len());
            self.setpoint = Self::SETPOINTS[pick];
            self.next_recipe = t + 1200.0 + exp_wait(rng, 900.0);
        }
        // Semi-implicit Euler in steps of at most 1 s (ω·h ≪ 1).
        let steps = dt.ceil().max(1.0);
        let h = dt / steps;
        for _ in 0..steps as u32 {
            let accel = Self::OMEGA * Self::OMEGA * (self.setpoint - self.temperature)
                - 2.0 * Self::ZETA * Self::OMEGA * self.rate;
            self.rate = (self.rate + accel * h).clamp(-Self::COOL_MAX, Self::HEAT_MAX);
            self.temperature += self.rate * h;
        }
        self.temperature + self.disturbance.step(dt, rng) + 0.7 * gauss(rng)
    }
}

// ---------------------------------------------------------------------------------------
// CNC spindle: a fixed part program shared by both channels

/// One step of the part program: how long, spindle speed (fraction of maximum) and
/// cutting load (fraction of rated).
struct Phase {
    secs: f64,
    speed: f64,
    load: f64,
}

/// The part program the spindle repeats (135 s per part): load the part with the spindle
/// stopped, rough, change tools, finish, change tools, drill, clear chips.
const PROGRAM: [Phase; 8] = [
    Phase {
        secs: 15.0,
        speed: 0.0,
        load: 0.0,
    },
    Phase {
        secs: 4.0,
        speed: 0.6,
        load: 0.0,
    },
    Phase {
        secs: 45.0,
        speed: 0.8,
        load: 0.9,
    },
    Phase {
        secs: 6.0,
        speed: 0.0,
        load: 0.0,
    },
    Phase {
        secs: 30.0,
        speed: 1.0,
        load: 0.45,
    },
    Phase {
        secs: 5.0,
        speed: 0.0,
        load: 0.0,
    },
    Phase {
        secs: 20.0,
        speed: 0.5,
        load: 0.7,
    },
    Phase {
        secs: 10.0,
        speed: 0.3,
        load: 0.0,
    },
];

pub(crate) const PROGRAM_SECS: f64 = 135.0;

/// Spindle speed and cutting load at `t`.
fn program_at(t: f64) -> (f64, f64) {
    let mut x = t.rem_euclid(PROGRAM_SECS);
    for phase in &PROGRAM {
        if x < phase.secs {
            return (phase.speed, phase.load);
        }
        x -= phase.secs;
    }
    (0.0, 0.0)
}

/// Bearing wear as a fraction of added vibration: +0.2 % per hour of operation, capped at
/// +60 % (about 12 days), so the trend is real but normal operation stays in ISO 10816
/// zone B. It restarts with the agent, a simulation artefact.
pub(crate) fn wear(t: f64) -> f64 {
    (0.002 * t / 3600.0).min(0.6)
}

/// Spindle vibration velocity RMS (mm/s): a floor from the machine's surroundings
/// (0.25), unbalance rising with speed (up to 1.0) and cutting forces rising with load (up
/// to 2.2), scaled up by bearing wear; the spindle accelerates and the cut engages with
/// a lag of about a second; multiplicative cutting noise (σ 7 %, correlation 0.4 s) and
/// sensor noise (σ 0.04). Roughing gives about 3 mm/s, an idle spindle 0.3.
pub(crate) struct SpindleVibration {
    speed: f64,
    load: f64,
    cutting: Ou,
}

impl SpindleVibration {
    fn new(rng: &mut SimRng) -> Self {
        Self {
            speed: 0.0,
            load: 0.0,
            cutting: Ou::new(0.4, 0.07, rng),
        }
    }

    fn step(&mut self, t: f64, dt: f64, rng: &mut SimRng) -> f64 {
        let (speed, load) = program_at(t);
        self.speed = lag(self.speed, speed, dt, 1.0);
        self.load = lag(self.load, load, dt, 0.6);
        let base = (0.25 + 1.0 * self.speed + 2.2 * self.load) * (1.0 + wear(t));
        let value = base * (1.0 + self.cutting.step(dt, rng)) + 0.04 * gauss(rng);
        value.max(0.0)
    }
}

/// Front bearing temperature (°C): friction heat from speed and load (plus wear) lifts
/// the target above the shop's ambient (24 °C, drifting σ 0.8 over half-hours) by up to
/// 30 °C; the bearing housing follows with a 10-minute lag, so it settles around 44 °C
/// over the part program, with a slow ripple, starting cold. Sensor noise σ 0.1 °C.
pub(crate) struct BearingTemperature {
    temperature: f64,
    ambient: Ou,
}

impl BearingTemperature {
    const AMBIENT: f64 = 24.0;

    fn new(rng: &mut SimRng) -> Self {
        let ambient = Ou::new(1800.0, 0.8, rng);
        Self {
            temperature: Self::AMBIENT + ambient.x,
            ambient,
        }
    }

    fn step(&mut self, t: f64, dt: f64, rng: &mut SimRng) -> f64 {
        let (speed, load) = program_at(t);
        let ambient = Self::AMBIENT + self.ambient.step(dt, rng);
        let target = ambient + 20.0 * speed + 16.0 * load + 10.0 * wear(t);
        self.temperature = lag(self.temperature, target, dt, 600.0);
        self.temperature + 0.1 * gauss(rng)
    }
}

// ---------------------------------------------------------------------------------------
// Hydraulic press

/// Main cylinder pressure of the hydraulic press (bar).
///
/// The seed gives this channel LOW thresholds (warning 150, critical 120 bar) with a
/// nominal 210, so normal operation cannot fall to zero between strokes (as the cylinder
/// of a prefill-valve press would). The model is therefore a press whose main cylinder
/// stays connected to the accumulator-backed system, held at about 210 bar: each stroke
/// dips while the ram approaches (oil flows into the growing cylinder, −26 bar), builds
/// to a peak of 226–236 bar while pressing, holds, decompresses with a dip (−32 bar) on
/// the return stroke, and recovers as the pump recharges, then waits for the next part.
/// Normal operation thus spans about 170–245 bar, inside 150–250. A stroke takes about
/// 10 s (a per-seed rhythm of 9.5–10.5 s, ±0.15 s jitter); after 15–40 strokes the
/// operator pauses for 20–60 s. Pump ripple σ 0.8 bar, system pressure drift σ 1.5 bar.
pub(crate) struct Press {
    rhythm: f64,
    start: f64,
    length: f64,
    peak: f64,
    strokes_left: u32,
    pressure: f64,
    system: Ou,
}

impl Press {
    pub(crate) const SYSTEM: f64 = 210.0;
    const APPROACH_DIP: f64 = 26.0;
    const RETURN_DIP: f64 = 32.0;

    fn new(rng: &mut SimRng) -> Self {
        let rhythm = rng.random_range(9.5..10.5);
        let mut press = Self {
            rhythm,
            start: 0.0,
            length: rhythm,
            peak: 0.0,
            strokes_left: rng.random_range(15..=40),
            pressure: Self::SYSTEM,
            system: Ou::new(300.0, 1.5, rng),
        };
        press.peak = press.draw_peak(rng);
        press
    }

    fn draw_peak(&self, rng: &mut SimRng) -> f64 {
        rng.random_range(16.0..26.0)
    }

    /// The pressure offset from system pressure `tau` seconds into a stroke.
    fn profile(tau: f64, peak: f64) -> f64 {
        const APPROACH_END: f64 = 1.2;
        const PRESS_END: f64 = 3.0;
        const HOLD_END: f64 = 4.6;
        const DECOMPRESS_END: f64 = 5.1;
        if tau < 0.0 {
            0.0
        } else if tau < APPROACH_END {
            -Self::APPROACH_DIP * smooth(tau / APPROACH_END)
        } else if tau < PRESS_END {
            lerp(
                -Self::APPROACH_DIP,
                peak,
                smooth((tau - APPROACH_END) / (PRESS_END - APPROACH_END)),
            )
        } else if tau < HOLD_END {
            peak
        } else if tau < DECOMPRESS_END {
            lerp(
                peak,
                -Self::RETURN_DIP,
                smooth((tau - HOLD_END) / (DECOMPRESS_END - HOLD_END)),
            )
        } else {
            -Self::RETURN_DIP * (-(tau - DECOMPRESS_END) / 0.6).exp()
        }
    }

    fn step(&mut self, t: f64, dt: f64, rng: &mut SimRng) -> f64 {
        if t - self.start > 3600.0 {
            // A gap of over an hour: start afresh rather than replaying every stroke.
            self.start = t;
        }
        let mut strokes = 0;
        while t >= self.start + self.length {
            strokes += 1;
            if strokes > 1000 {
                // Only reachable when `t` is so large that adding a stroke no longer
                // changes it; never loop forever.
                self.start = t;
                break;
            }
            self.start += self.length;
            self.strokes_left = self.strokes_left.saturating_sub(1);
            if self.strokes_left == 0 {
                self.start += rng.random_range(20.0..60.0);
                self.strokes_left = rng.random_range(15..=40);
            }
            self.length = (self.rhythm + 0.15 * gauss(rng)).clamp(8.5, 12.0);
            self.peak = self.draw_peak(rng);
        }
        let target =
            Self::SYSTEM + self.system.step(dt, rng) + Self::profile(t - self.start, self.peak);
        self.pressure = lag(self.pressure, target, dt, 0.08);
        self.pressure + 0.8 * gauss(rng)
    }
}

// ---------------------------------------------------------------------------------------
// Paint booth

/// Paint-booth relative humidity (%RH). The make-up air's humidity wanders slowly
/// (σ 10 %RH around 55, correlation 45 min) and the booth follows it with a 20-minute
/// lag; when the booth is more than 4 %RH from 55 the air handler's humidifier or
/// dehumidifier pulls it back (time constant 3 min) until it is within 1 %RH. The result
/// drifts and gets corrected, mostly within 55 ± 5. Local fluctuation σ 0.4, sensor
/// noise σ 0.3; clamped to 0–100 like the sensor.
pub(crate) struct BoothHumidity {
    humidity: f64,
    outside: Ou,
    correcting: bool,
    local: Ou,
}

impl BoothHumidity {
    const SETPOINT: f64 = 55.0;

    fn new(rng: &mut SimRng) -> Self {
        Self {
            humidity: Self::SETPOINT + 1.5 * gauss(rng),
            outside: Ou::new(2700.0, 10.0, rng),
            correcting: false,
            local: Ou::new(60.0, 0.4, rng),
        }
    }

    fn step(&mut self, dt: f64, rng: &mut SimRng) -> f64 {
        let outside = Self::SETPOINT + self.outside.step(dt, rng);
        let steps = (dt / 2.0).ceil().max(1.0);
        let h = dt / steps;
        for _ in 0..steps as u32 {
            let error = self.humidity - Self::SETPOINT;
            if error.abs() > 4.0 {
                self.correcting = true;
            } else if error.abs() < 1.0 {
                self.correcting = false;
            }
            let mut rate = (outside - self.humidity) / 1200.0;
            if self.correcting {
                rate -= error / 180.0;
            }
            self.humidity += rate * h;
        }
        (self.humidity + self.local.step(dt, rng) + 0.3 * gauss(rng)).clamp(0.0, 100.0)
    }
}

/// Paint-booth air temperature (°C). Heat leaks toward a slowly wandering outside
/// equilibrium (σ 3 °C around 22, correlation 1 h) with a 30-minute time constant; a
/// thermostat with a dead band heats (below 21.5 °C, until 22.2) or cools (above 22.5,
/// until 21.8) at 0.3 °C/min, giving the saw-tooth of a real air handler. Stratification
/// σ 0.1 °C, sensor noise σ 0.05 °C.
pub(crate) struct BoothTemperature {
    temperature: f64,
    outside: Ou,
    hvac: Hvac,
    stratification: Ou,
}

#[derive(Clone, Copy, PartialEq)]
enum Hvac {
    Idle,
    Heating,
    Cooling,
}

impl BoothTemperature {
    const SETPOINT: f64 = 22.0;
    const HVAC_RATE: f64 = 0.005;

    fn new(rng: &mut SimRng) -> Self {
        Self {
            temperature: Self::SETPOINT + 0.3 * gauss(rng),
            outside: Ou::new(3600.0, 3.0, rng),
            hvac: Hvac::Idle,
            stratification: Ou::new(120.0, 0.1, rng),
        }
    }

    fn step(&mut self, dt: f64, rng: &mut SimRng) -> f64 {
        let outside = Self::SETPOINT + self.outside.step(dt, rng);
        let steps = (dt / 2.0).ceil().max(1.0);
        let h = dt / steps;
        for _ in 0..steps as u32 {
            let t = self.temperature;
            self.hvac = match self.hvac {
                Hvac::Idle if t < 21.5 => Hvac::Heating,
                Hvac::Idle if t > 22.5 => Hvac::Cooling,
                Hvac::Heating if t > 22.2 => Hvac::Idle,
                Hvac::Cooling if t < 21.8 => Hvac::Idle,
                other => other,
            };
            let hvac = match self.hvac {
                Hvac::Idle => 0.0,
                Hvac::Heating => Self::HVAC_RATE,
                Hvac::Cooling => -Self::HVAC_RATE,
            };
            self.temperature += ((outside - t) / 1800.0 + hvac) * h;
        }
        self.temperature + self.stratification.step(dt, rng) + 0.05 * gauss(rng)
    }
}

// ---------------------------------------------------------------------------------------
// Compressor: a deterministic process shared by both channels

/// The screw compressor's load/unload cycle, identical for its power and current
/// channels because it depends on `elapsed` only.
///
/// The plant's air demand (17–73 % of the compressor's capacity) is a sum of three slow
/// waves (periods of about 23, 7 and 2 minutes). The receiver pressure rises while the
/// compressor is loaded and falls while it is unloaded; it loads at 6.5 bar and unloads
/// at 7.5 bar, so loaded and unloaded spells last from tens of seconds to a few minutes.
/// Loaded, the motor draws 55–63 kW (more at higher discharge pressure); unloaded, 17 kW.
/// The motor follows with a lag of 1.5 s. Stepped in fixed 0.5 s steps so both channels
/// see exactly the same process whatever their sampling jitter.
pub(crate) struct Compressor {
    steps_done: u64,
    pressure: f64,
    loaded: bool,
    pub(crate) power: f64,
}

impl Compressor {
    const STEP: f64 = 0.5;
    const CUT_IN: f64 = 6.5;
    const CUT_OUT: f64 = 7.5;
    /// Receiver pressure rise per second at full output and no demand (bar/s).
    const FILL_RATE: f64 = 1.0 / 40.0;
    pub(crate) const UNLOADED_KW: f64 = 17.0;

    fn new() -> Self {
        let pressure = 7.0;
        Self {
            steps_done: 0,
            pressure,
            loaded: true,
            power: Self::loaded_kw(pressure),
        }
    }

    fn loaded_kw(pressure: f64) -> f64 {
        55.0 + 8.0 * (pressure - Self::CUT_IN)
    }

    /// Air demand as a fraction of capacity at time `t`.
    pub(crate) fn demand(t: f64) -> f64 {
        use std::f64::consts::TAU;
        0.45 + 0.15 * (TAU * t / 1381.0).sin()
            + 0.08 * (TAU * t / 409.0 + 1.3).sin()
            + 0.05 * (TAU * t / 137.0 + 0.4).sin()
    }

    pub(crate) fn advance_to(&mut self, t: f64) {
        let target = (t / Self::STEP).floor() as u64;
        // After a gap of over an hour, skip ahead instead of replaying it.
        let max_steps = (3600.0 / Self::STEP) as u64;
        if target > self.steps_done.saturating_add(max_steps) {
            self.steps_done = target - max_steps;
        }
        while self.steps_done < target {
            self.steps_done += 1;
            let demand = Self::demand(self.steps_done as f64 * Self::STEP);
            if self.loaded {
                self.pressure += (1.0 - demand) * Self::FILL_RATE * Self::STEP;
                if self.pressure >= Self::CUT_OUT {
                    self.loaded = false;
                }
            } else {
                self.pressure -= demand * Self::FILL_RATE * Self::STEP;
                if self.pressure <= Self::CUT_IN {
                    self.loaded = true;
                }
            }
            let target_kw = if self.loaded {
                Self::loaded_kw(self.pressure)
            } else {
                Self::UNLOADED_KW
            };
            self.power = lag(self.power, target_kw, Self::STEP, 1.5);
        }
    }
}

/// Line current (A) for an active power (kW) on a 400 V three-phase feed. The power factor
/// of an induction motor falls at light load: 0.85 loaded (55 kW ≈ 93 A, as in the seed),
/// about 0.57 unloaded (17 kW ≈ 43 A).
pub(crate) fn line_current(power_kw: f64) -> f64 {
    let power_factor = 0.55 + 0.30 * ((power_kw - 15.0) / 40.0).clamp(0.0, 1.0);
    power_kw * 1000.0 / (3f64.sqrt() * 400.0 * power_factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn program_adds_up() {
        let total: f64 = PROGRAM.iter().map(|p| p.secs).sum();
        assert_eq!(total, PROGRAM_SECS);
        assert_eq!(program_at(0.0), (0.0, 0.0));
        assert_eq!(program_at(20.0), (0.8, 0.9));
        assert_eq!(program_at(PROGRAM_SECS + 20.0), (0.8, 0.9));
    }

    #[test]
    fn wear_trends_up_and_is_capped() {
        assert_eq!(wear(0.0), 0.0);
        assert!(wear(100.0 * 3600.0) > wear(3600.0));
        assert_eq!(wear(1e9), 0.6);
    }

    #[test]
    fn current_matches_the_seed_at_nominal_power() {
        assert!((line_current(55.0) - 93.0).abs() < 1.0);
    }

    #[test]
    fn press_profile_stays_inside_the_warning_band() {
        let mut tau = -1.0;
        while tau < 12.0 {
            for peak in [16.0, 26.0] {
                let p = Press::SYSTEM + Press::profile(tau, peak);
                assert!((170.0..=240.0).contains(&p), "{p} at {tau}");
            }
            tau += 0.01;
        }
    }

    #[test]
    fn compressor_channels_share_the_process() {
        let mut a = Compressor::new();
        let mut b = Compressor::new();
        // Different sampling schedules, same process at the same step.
        for i in 0..3600 {
            a.advance_to(i as f64);
            b.advance_to(i as f64 + 0.013);
            assert_eq!(a.power.to_bits(), b.power.to_bits(), "at {i} s");
        }
    }

    #[test]
    fn a_huge_gap_does_not_hang_or_explode() {
        let mut rng = SimRng::seed_from_u64(1);
        for model in SimModel::ALL {
            let mut m = Model::new(model, &mut rng);
            let a = m.step(0.0, 0.0, &mut rng);
            let b = m.step(1e7, 3600.0, &mut rng);
            let c = m.step(1e7 + 1.0, 1.0, &mut rng);
            // Absurd uptimes, where adding a second to `t` no longer changes it.
            let d = m.step(1e19, 3600.0, &mut rng);
            let e = m.step(1e19, 0.0, &mut rng);
            for v in [a, b, c, d, e] {
                assert!(v.is_finite(), "{model:?}: {v}");
            }
        }
    }
}
