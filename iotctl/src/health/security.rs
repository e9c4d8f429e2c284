//! What an attacker on the network could use: a broker that takes anonymous clients
//! (anyone who reaches it can publish as any device) and links to other machines that
//! carry data in plaintext. Each is a warning, not a failure: a trusted network or a
//! single box may choose them, but the operator should know.

use rumqttc::MqttOptions;

use super::Check;
use crate::global::Global;
use crate::services;

/// Connects without credentials: a broker that accepts is open to every box that
/// reaches it.
pub(super) async fn anonymous_check(global: &Global) -> Check {
    let options = MqttOptions::new(
        format!("iotctl-anonymous-{:08x}", rand::random::<u32>()),
        global.mqtt.host.clone(),
        global.mqtt.port,
    );
    match services::mqtt_connect(options).await {
        Ok((client, mut eventloop)) => {
            if client.disconnect().await.is_ok() {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(1), eventloop.poll()).await;
            }
            Check::warn(
                "mqtt-access",
                format!(
                    "the broker at {} accepts anonymous clients: anyone who reaches it can \
                     publish as any device",
                    global.mqtt
                ),
                "the bridge's embedded broker: set embedded.registry_url (the gateway \
                 registry) and leave embedded.allow_anonymous false; Mosquitto: \
                 allow_anonymous false with a password file",
            )
        }
        Err(_) => Check::ok(
            "mqtt-access",
            format!("the broker at {} refuses anonymous clients", global.mqtt),
        ),
    }
}

/// The links iotctl was pointed at that leave this machine unencrypted.
pub(super) fn links_check(global: &Global) -> Check {
    let mut plaintext = Vec::new();
    if !is_loopback(&global.mqtt.host) {
        plaintext.push(format!("mqtt {} (plain MQTT)", global.mqtt));
    }
    if let Some(url) = &global.database_url {
        let encrypted = [
            "sslmode=require",
            "sslmode=verify-ca",
            "sslmode=verify-full",
        ]
        .iter()
        .any(|mode| url.contains(mode));
        if !encrypted && !is_loopback(url_host(url)) {
            plaintext.push(format!("postgresql {} (no sslmode)", url_host(url)));
        }
    }
    if let Some(url) = &global.redis_url {
        if url.starts_with("redis://") && !is_loopback(url_host(url)) {
            plaintext.push(format!("redis {} (redis://, not rediss://)", url_host(url)));
        }
    }
    for broker in global.kafka_brokers.split(',') {
        let host = broker
            .trim()
            .rsplit_once(':')
            .map_or(broker.trim(), |(h, _)| h);
        if !host.is_empty() && !is_loopback(host) {
            plaintext.push(format!(
                "kafka {} (no TLS settings known to iotctl)",
                broker.trim()
            ));
        }
    }
    if plaintext.is_empty() {
        Check::ok("links", "every link iotctl was given stays on this machine")
    } else {
        Check::warn(
            "links",
            format!(
                "links to other machines in plaintext: {}",
                plaintext.join(", ")
            ),
            "keep these on a network you trust: the pipeline does not encrypt its links yet",
        )
    }
}

/// The host part of a `scheme://[user[:password]@]host[:port][/…]` URL.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_from_urls_and_loopback_is_told_apart() {
        assert_eq!(url_host("postgres://u:p@db.plant:5432/x"), "db.plant");
        assert_eq!(url_host("redis://:pw@127.0.0.1:6379"), "127.0.0.1");
        assert_eq!(url_host("postgres://[::1]:5432/x?sslmode=disable"), "::1");
        assert_eq!(url_host("postgres://localhost/x"), "localhost");
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("10.0.0.5") && !is_loopback("db.plant"));
    }
}
