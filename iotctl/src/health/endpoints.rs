//! The network checks of `iotctl health`: the MQTT broker the devices publish to accepts
//! connections, and the bridge and the ingester report ready on their `/readyz`, with a
//! fix that tells a stalled service from a missing dependency.

use std::time::Duration;

use super::Check;
use crate::global::Global;
use crate::http::{self, HttpUrl};
use crate::output;
use crate::services::{self, CONNECT_TIMEOUT};

pub(super) const BRIDGE_FIX: &str =
    "start the bridge (`cargo run --release -p bridge`; metrics on :9101) \
     or point --bridge-metrics at it";
pub(super) const INGESTER_FIX: &str =
    "start the ingester (`cargo run --release -p cloud-ingester -- \
     --migrate`; metrics on :9102) or point --ingester-metrics at it";
pub(super) const CONSOLE_FIX: &str =
    "start the console (`cargo run --release -p console`; pages on :8080) \
     or point --console-url at it";

pub(super) async fn mqtt_check(global: &Global) -> Check {
    let options = match services::mqtt_options(global, "health") {
        Ok(options) => options,
        Err(e) => return Check::fail("mqtt", output::error_text(&e), CREDENTIALS_FIX),
    };
    match services::mqtt_connect(options).await {
        Ok((client, mut eventloop)) => {
            // A clean goodbye, so the broker does not log a lost client.
            if client.disconnect().await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            }
            Check::ok(
                "mqtt",
                format!("the broker at {} accepts connections", global.mqtt),
            )
        }
        Err(e) if global.mqtt_user.is_none() => Check::fail(
            "mqtt",
            output::error_text(&e),
            "start the bridge (its embedded broker listens on 1883: `cargo run --release -p \
             bridge`) or point --mqtt / IOTCTL_MQTT at the broker the devices use; a broker \
             that authenticates needs a gateway id and its secret: IOTCTL_MQTT_USER and \
             IOTCTL_MQTT_PASSWORD_FILE (scripts/run.sh writes them to .stack/run/operator.env)",
        ),
        Err(e) => Check::fail("mqtt", output::error_text(&e), CREDENTIALS_FIX),
    }
}

const CREDENTIALS_FIX: &str = "check that IOTCTL_MQTT_USER is a registered, enabled gateway \
     (`iotctl gateways list`) and that IOTCTL_MQTT_PASSWORD_FILE holds its current secret, \
     mode 0600 (`iotctl gateways rotate ID --secret-file PATH` makes a new one)";

/// A service's `/readyz`: 200 when every dependency it names is connected.
pub(super) async fn readiness(check: &'static str, url: &HttpUrl, start_fix: &str) -> Check {
    match http::get(url, "/readyz", CONNECT_TIMEOUT).await {
        Ok(response) => {
            let report = response
                .body
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            if response.status == 200 {
                Check::ok(check, format!("ready at {url}: {report}"))
            } else {
                Check::fail(
                    check,
                    format!("not ready (HTTP {}) at {url}: {report}", response.status),
                    not_ready_fix(check, &response.body),
                )
            }
        }
        Err(e) => Check::fail(
            check,
            format!(
                "nothing answers at {url}/readyz ({})",
                output::error_text(&e)
            ),
            start_fix,
        ),
    }
}

/// What to do about a service that answers but is not ready: a stall it reports
/// (`not ready: …`) is named as such, otherwise a dependency is down.
fn not_ready_fix(check: &str, body: &str) -> String {
    let stalls: Vec<&str> = body
        .lines()
        .filter_map(|line| line.trim().strip_prefix("not ready: "))
        .collect();
    if stalls.is_empty() {
        format!(
            "the {check} runs but a dependency is down: bring back what the report names \
             \"down\" and see the {check}'s log"
        )
    } else {
        format!(
            "the {check} is not making progress ({}): see its `stalled` system events and its \
             log; it re-reads its work by itself every 30 s, restart it if that does not help",
            stalls.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_service_is_told_apart_from_a_missing_dependency() {
        let stalled = not_ready_fix(
            "ingester",
            "kafka connected\npostgresql connected\nnot ready: 500 records wait\n",
        );
        assert!(
            stalled.starts_with("the ingester is not making progress (500 records wait)"),
            "{stalled}"
        );
        let down = not_ready_fix("ingester", "kafka down\npostgresql connected\n");
        assert!(down.contains("a dependency is down"), "{down}");
    }
}
