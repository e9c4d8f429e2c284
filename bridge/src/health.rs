//! Liveness and readiness, and the HTTP endpoints that expose them with the metrics.
//!
//! Ready means both sides are connected: subscribed on the MQTT broker (or the embedded
//! broker listening) and at least one Kafka broker up. A load balancer or Kubernetes then sends
//! nothing to, and alerts on, a bridge that cannot forward.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Health {
    mqtt: AtomicBool,
    kafka: AtomicBool,
}

impl Health {
    pub fn set_mqtt(&self, up: bool) {
        self.mqtt.store(up, Ordering::Relaxed);
    }

    /// Returns the previous state, so callers log only the transitions.
    pub fn set_kafka(&self, up: bool) -> bool {
        self.kafka.swap(up, Ordering::Relaxed)
    }

    pub fn mqtt(&self) -> bool {
        self.mqtt.load(Ordering::Relaxed)
    }

    pub fn kafka(&self) -> bool {
        self.kafka.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.mqtt() && self.kafka()
    }
}

/// Binds the HTTP listener now (so a taken port is a start-up error) and serves
/// `/metrics`, `/livez` and `/readyz` until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async { crate::stats::prometheus().render() }),
        )
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!("HTTP endpoint stopped: {e}");
        }
    });
    Ok((addr, task))
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    let side = |up: bool| if up { "connected" } else { "down" };
    let body = format!(
        "mqtt {}\nkafka {}\n",
        side(health.mqtt()),
        side(health.kafka())
    );
    if health.ready() {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}
