//! The console as a running service: the routes, `/events`, and the start and stop. `main.rs` only parses flags and calls [`Console::start`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use contracts::redis::RedisKeys;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::auth::Access;
use crate::config::{ConsoleConfig, Viewing};
use crate::live::{Reader, Snapshot};
use crate::pages;
use crate::state::{AppState, Shared};

/// `/readyz`: PostgreSQL and Redis, as the live reader last found them (both down
/// until its first look).
struct Readiness(watch::Receiver<Arc<Snapshot>>);

impl service::http::Readiness for Readiness {
    fn checks(&self) -> Vec<(&'static str, bool)> {
        let snapshot = self.0.borrow();
        vec![
            ("postgres", snapshot.postgres_up),
            ("redis", snapshot.redis_up),
        ]
    }
}

/// How long a stop waits for the requests in hand.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running console.
pub struct Console {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Console {
    /// Connects (lazily: a database or Redis that is down is shown, not fatal), starts
    /// the live reader and serves on `http.listen`.
    pub async fn start(config: ConsoleConfig) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(config.database.max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(&config.database.url)
            .context("database.url")?;
        let redis = redis::Client::open(config.redis.url.as_str()).context("redis.url")?;
        let keys = RedisKeys::new(config.redis.prefix.clone());
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka.brokers)
            .set("client.id", "console")
            .set("message.timeout.ms", "10000")
            .create()
            .context("kafka.brokers")?;
        let agents = crate::pipeline::follow_agents(&config.pipeline);
        let (reader, live) = Reader::new(
            pool.clone(),
            redis.clone(),
            keys.clone(),
            agents.clone(),
            config.live.interval,
            config.live.plant_refresh,
        );
        let stop = CancellationToken::new();
        let pipeline = crate::pipeline::start(
            &config.pipeline,
            &config.kafka.brokers,
            agents,
            stop.clone(),
        );
        let state = Arc::new(AppState {
            live: live.clone(),
            pipeline,
            pool,
            access: Access::new(config.access.users.clone(), config.access.session_ttl),
            viewing: config.access.viewing,
            producer,
            alerts_topic: config.kafka.alerts_topic.clone(),
            redis,
            keys,
        });
        let mut tasks = vec![tokio::spawn(reader.run(stop.clone()))];
        let (addr, served) = service::http::serve_with(
            &config.http,
            Arc::new(Readiness(live)),
            routes(state),
            stop.clone(),
        )
        .await?;
        tasks.push(served);
        tracing::info!("plant console on http://{addr}/");
        Ok(Self { addr, stop, tasks })
    }

    /// Serves until `signal`, then stops.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        signal.await;
        self.stop().await;
        Ok(())
    }

    /// Stops taking requests and lets those in hand finish (an acknowledgement being
    /// announced, say) for up to [`STOP_GRACE`]; live streams never finish by
    /// themselves, so what is left then is cut.
    pub async fn stop(self) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                task.await.ok();
            }
        }
    }
}

fn routes(state: Shared) -> Router {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/devices/:id", get(pages::device::page))
        .route("/alerts", get(pages::alerts::page))
        .route("/alerts/:id/:action", post(pages::alerts::act))
        .route("/pipeline", get(pages::pipeline::page))
        .route("/events", get(events))
        .route("/sparks", get(pages::overview::sparks))
        .route("/login", get(pages::login::form).post(pages::login::submit))
        .route("/logout", post(pages::login::log_out))
        .route("/static/console.css", get(stylesheet))
        .route("/static/console.js", get(script))
        .layer(middleware::from_fn_with_state(state.clone(), viewing_gate))
        .with_state(state)
}

/// With `access.viewing = "login"`, every page but the login form needs a session.
async fn viewing_gate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let open = state.viewing == Viewing::Open
        || request.uri().path() == "/login"
        || request.uri().path().starts_with("/static/")
        || state.access.session(request.headers()).is_some();
    if open {
        next.run(request).await
    } else {
        Redirect::to("/login").into_response()
    }
}

/// The live view as Server-Sent Events: the whole view first, then each change.
async fn events(State(state): State<Shared>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let viewers = metrics::gauge!("console_live_viewers");
    viewers.increment(1.0);
    let guard = ViewerGuard(viewers);
    let mut last = 0u64;
    let stream = WatchStream::new(state.live.clone()).map(move |snapshot| {
        let _viewer = &guard;
        let data = if last != 0 && snapshot.version == last + 1 {
            snapshot.delta.clone()
        } else {
            snapshot.full()
        };
        last = snapshot.version;
        Ok(Event::default().event("plant").data(&*data))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Counts a viewer while its stream lives.
struct ViewerGuard(metrics::Gauge);

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

async fn stylesheet() -> impl IntoResponse {
    static_file("text/css", include_str!("../static/console.css"))
}

async fn script() -> impl IntoResponse {
    static_file("text/javascript", include_str!("../static/console.js"))
}

fn static_file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
}
