//! The HTTP endpoint of a service: `/metrics` (Prometheus), `/livez` and `/readyz`.
//!
//! Ready means every dependency the service needs to do its work is usable now; a load
//! balancer or Kubernetes then sends nothing to, and alerts on, an instance that cannot
//! work. Live only means the process answers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `[http]` in each cloud service's configuration. No default address: each service
/// has its own port, set in its configuration's defaults.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `/metrics` (Prometheus), `/livez` and `/readyz`.
    pub listen: SocketAddr,
}

impl HttpConfig {
    /// Listening on every interface on `port`.
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], port)),
        }
    }
}

/// What `/readyz` reports: each dependency's name and whether it is usable now, and
/// why the service is not doing its work although its dependencies are (a stall). Ready
/// when every dependency is usable and there is no problem.
pub trait Readiness: Send + Sync + 'static {
    fn checks(&self) -> Vec<(&'static str, bool)>;

    /// Sentences saying why the service is not making progress; none by default.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The endpoint could not listen where `http.listen` says.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP on {listen} (http.listen): {source}")]
pub struct ServeError {
    pub listen: SocketAddr,
    pub source: std::io::Error,
}

/// Binds the listener now (so a taken port is a start-up error) and serves `/metrics`,
/// `/livez` and `/readyz` until `shutdown`, keeping the Prometheus recorder's histograms
/// folded meanwhile ([`crate::metrics::prometheus_upkeep`]). Returns the bound address
/// (`http.listen` may ask for port 0) and the task, which ends after `shutdown`.
pub async fn serve(
    config: &HttpConfig,
    readiness: Arc<dyn Readiness>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    serve_with(config, readiness, Router::new(), shutdown).await
}

/// [`serve`], with a service's own `routes` beside the three endpoints on the same port
/// (the console's pages).
pub async fn serve_with(
    config: &HttpConfig,
    readiness: Arc<dyn Readiness>,
    routes: Router,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    let listen = config.listen;
    let bound = async {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        Ok::<_, std::io::Error>((listener, addr))
    };
    let (listener, addr) = bound
        .await
        .map_err(|source| ServeError { listen, source })?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async { crate::metrics::prometheus().render() }),
        )
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
        .merge(routes);
    let upkeep = crate::metrics::prometheus_upkeep(shutdown.clone());
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        let (served, ()) = tokio::join!(served, upkeep);
        if let Err(e) = served {
            tracing::error!("HTTP endpoint stopped: {e}");
        }
    });
    Ok((addr, task))
}

/// 200 when every dependency is up and nothing stalls, else 503; the body has one
/// `name connected|down` line per dependency and a `not ready: …` line per problem, so a
/// person can see what is missing.
async fn readyz(State(readiness): State<Arc<dyn Readiness>>) -> (StatusCode, String) {
    let checks = readiness.checks();
    let problems = readiness.problems();
    let mut body: String = checks
        .iter()
        .map(|(name, up)| format!("{name} {}\n", if *up { "connected" } else { "down" }))
        .collect();
    for problem in &problems {
        body.push_str(&format!("not ready: {problem}\n"));
    }
    if checks.iter().all(|(_, up)| *up) && problems.is_empty() {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Flags(AtomicBool);

    impl Readiness for Flags {
        fn checks(&self) -> Vec<(&'static str, bool)> {
            vec![("always", true), ("flag", self.0.load(Ordering::Relaxed))]
        }
    }

    /// Every dependency up, but stuck.
    struct Stalled;

    impl Readiness for Stalled {
        fn checks(&self) -> Vec<(&'static str, bool)> {
            vec![("always", true)]
        }

        fn problems(&self) -> Vec<String> {
            vec!["500 records wait".to_owned()]
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.split(' ').nth(1).unwrap().parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap().to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn readyz_follows_the_checks_and_names_each_dependency() {
        let flags = Arc::new(Flags(AtomicBool::new(false)));
        let stop = CancellationToken::new();
        let (addr, task) = serve(
            &HttpConfig {
                listen: ([127, 0, 0, 1], 0).into(),
            },
            flags.clone(),
            stop.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "always connected\nflag down\n".to_owned())
        );
        flags.0.store(true, Ordering::Relaxed);
        assert_eq!(
            get(addr, "/readyz").await,
            (200, "always connected\nflag connected\n".to_owned())
        );
        assert_eq!(get(addr, "/livez").await, (200, "ok\n".to_owned()));
        assert_eq!(get(addr, "/metrics").await.0, 200);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_problem_makes_it_not_ready_and_says_why() {
        let stop = CancellationToken::new();
        let (addr, task) = serve(
            &HttpConfig {
                listen: ([127, 0, 0, 1], 0).into(),
            },
            Arc::new(Stalled),
            stop.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            get(addr, "/readyz").await,
            (
                503,
                "always connected\nnot ready: 500 records wait\n".to_owned()
            )
        );
        stop.cancel();
        task.await.unwrap();
    }
}
