//! What the tests of the ingester binary as a process (`operation`, `outages`) share:
//! waiting on it with its log at hand, and reading back its operation log.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use testkit::ChildGuard;

/// Polls `check` every 200 ms until it returns something, or fails the test quoting the
/// ingester's log.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    ingester: &ChildGuard,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}; the ingester's log {}:\n{}",
            ingester.log_path().display(),
            ingester.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The details of the `kind` events of `instance`, in `system_events`.
pub async fn events(pool: &PgPool, instance: &str, kind: &str) -> Vec<serde_json::Value> {
    let details: Vec<String> = sqlx::query_scalar(
        "SELECT details::text FROM system_events \
         WHERE service = 'cloud-ingester' AND instance = $1 AND kind = $2",
    )
    .bind(instance)
    .bind(kind)
    .fetch_all(pool)
    .await
    .unwrap();
    details
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect()
}
