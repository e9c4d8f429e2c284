//! What every binary of the pipeline shares: signals, the clock policy,
//! configuration layering and `--check-config`, logging, the Prometheus recorder, the
//! health/metrics HTTP endpoint and readiness, the periodic metrics record.
//!
//! Without features it is only [`shutdown_signal`], the [`clock`] policy, [`redact`] and
//! [`secret_file`];
//! the edge agent on the Pi adds `config` and `logging`. The cloud services also enable
//! `http` (the recorder in [`metrics`], the endpoint in [`http`], what readiness is made
//! of in [`readiness`]) and `kafka` (the record in [`metrics_record`], the dead-letter
//! rules in [`dead_letter`], the configuration checks in [`kafka_config`]); `logging`
//! with `config` brings [`run`], what every binary's `main` does after parsing its flags;
//! `mqtt-tls` brings [`mqtt_tls`], TLS for the MQTT clients (the agent, the bridge).

pub mod clock;
#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "kafka")]
pub mod dead_letter;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka_config;
#[cfg(feature = "kafka")]
pub mod kafka_connection;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "http")]
pub mod metrics;
#[cfg(feature = "kafka")]
pub mod metrics_record;
#[cfg(feature = "mqtt-tls")]
pub mod mqtt_tls;
#[cfg(feature = "http")]
pub mod readiness;
pub mod redact;
#[cfg(all(feature = "logging", feature = "config"))]
pub mod run;
pub mod secret_file;

/// Completes on SIGTERM or SIGINT (Ctrl-C): the signals a service manager, a container
/// runtime or a person at the terminal use to ask for a clean stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // No SIGTERM handler could be installed: Ctrl-C still works.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
