//! The agents' health, as each reports it on its gateway's retained MQTT `status` topic
//! (every 10 s by default): followed in the background by one subscription, so a reader
//! always has the latest report of every gateway and the one before it, for rates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use contracts::status::{GatewayStatus, Health, AGENT_KIND};
use protocol::topic::TopicKind;
use rumqttc::{Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

/// What a gateway last said of itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentReport {
    /// Its last two (readings so far, uptime in s), for a rate.
    pub samples: [(f64, f64); 2],
    /// Its latest health report.
    pub health: Health,
    /// When that report arrived.
    pub seen: Instant,
}

/// By gateway status topic.
pub type AgentReports = HashMap<String, AgentReport>;

/// A gateway that has not reported for this long no longer counts.
pub const AGENT_SILENT: Duration = Duration::from_secs(30);

/// Where the agents' broker is, and who asks.
#[derive(Debug, Clone)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    /// The topic tree's first level.
    pub prefix: String,
    /// A client id of this reader's own: a broker drops an older session reusing one.
    pub client_id: String,
}

/// Follows the agents' retained status messages in the background; the receiver always
/// holds what arrived so far, or why the broker cannot be read.
pub fn follow(broker: Broker) -> watch::Receiver<Result<AgentReports, String>> {
    let (tx, rx) = watch::channel(Ok(AgentReports::new()));
    let mut options = MqttOptions::new(broker.client_id, broker.host.clone(), broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    let filter = protocol::topic::filter(&broker.prefix, TopicKind::Status)
        .map(|f| f.to_string())
        .unwrap_or_default();
    let address = format!("{}:{}", broker.host, broker.port);
    tokio::spawn(async move {
        let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
        let mut subscribed = false;
        loop {
            if tx.is_closed() {
                return;
            }
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) if !subscribed => {
                    subscribed = client.subscribe(&filter, QoS::AtMostOnce).await.is_ok();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let topic = publish.topic.clone();
                    let report = report_of(&publish.payload);
                    tx.send_modify(|state| {
                        // Messages flow again after a failure: start afresh.
                        if state.is_err() {
                            *state = Ok(AgentReports::new());
                        }
                        if let Ok(reports) = state {
                            record(reports, topic, report);
                        }
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(format!("MQTT {address}: {e}")));
                    subscribed = false;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    });
    rx
}

fn record(reports: &mut AgentReports, topic: String, report: Report) {
    match report {
        // A gateway gone offline: not counted.
        Report::Offline => {
            reports.remove(&topic);
        }
        Report::Online(health) => {
            let health = *health;
            let sample = (health.readings as f64, health.uptime_s as f64);
            let entry = reports.entry(topic).or_insert_with(|| AgentReport {
                samples: [sample; 2],
                health: health.clone(),
                seen: Instant::now(),
            });
            if sample.1 > entry.samples[1].1 {
                entry.samples = [entry.samples[1], sample];
            } else if sample.1 < entry.samples[1].1 {
                // Restarted: its counters began again.
                entry.samples = [sample; 2];
            }
            entry.health = health;
            entry.seen = Instant::now();
        }
        Report::NotAnAgent => {}
    }
}

/// The gateways heard from within [`AGENT_SILENT`], and the readings per second they
/// sample together (none until one has reported twice).
pub fn readings_per_s(reports: &AgentReports) -> (usize, Option<f64>) {
    let live: Vec<&AgentReport> = reports
        .values()
        .filter(|r| r.seen.elapsed() < AGENT_SILENT)
        .collect();
    let rates: Vec<f64> = live
        .iter()
        .map(|r| r.samples)
        .filter(|[(r0, u0), (r1, u1)]| u1 > u0 && r1 >= r0)
        .map(|[(r0, u0), (r1, u1)]| (r1 - r0) / (u1 - u0))
        .collect();
    (live.len(), (!rates.is_empty()).then(|| rates.iter().sum()))
}

/// What a retained status message says.
#[derive(Debug, PartialEq)]
enum Report {
    Online(Box<Health>),
    /// A gateway that is not online (offline, or its last will).
    Offline,
    /// A device's status, or something else on a status topic.
    NotAnAgent,
}

fn report_of(payload: &[u8]) -> Report {
    let Ok(status) = serde_json::from_slice::<GatewayStatus>(payload) else {
        return Report::NotAnAgent;
    };
    if status.kind != AGENT_KIND {
        return Report::NotAnAgent;
    }
    if status.state != "online" {
        return Report::Offline;
    }
    match status.health {
        Some(health) => Report::Online(Box::new(health)),
        None => Report::NotAnAgent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_status_gives_its_health_and_others_nothing() {
        let online = br#"{"state":"online","kind":"edge-agent","boot_id":"ab","health":{"readings":120,"uptime_s":10}}"#;
        let Report::Online(health) = report_of(online) else {
            panic!("an online agent");
        };
        assert_eq!((health.readings, health.uptime_s), (120, 10));
        let offline = br#"{"state":"offline","kind":"edge-agent","boot_id":"ab"}"#;
        assert_eq!(report_of(offline), Report::Offline);
        let device = br#"{"state":"online","gateway":"g"}"#;
        assert_eq!(report_of(device), Report::NotAnAgent);
        assert_eq!(report_of(b"not json"), Report::NotAnAgent);
    }

    #[test]
    fn rates_come_from_two_reports_of_one_boot() {
        let mut reports = AgentReports::new();
        let health = |readings, uptime_s| Health {
            readings,
            uptime_s,
            ..Health::default()
        };
        let online = |readings, uptime_s| Report::Online(Box::new(health(readings, uptime_s)));
        record(&mut reports, "t".into(), online(100, 10));
        assert_eq!(readings_per_s(&reports), (1, None));
        record(&mut reports, "t".into(), online(300, 20));
        assert_eq!(readings_per_s(&reports), (1, Some(20.0)));
        record(&mut reports, "t".into(), online(50, 5));
        assert_eq!(
            readings_per_s(&reports),
            (1, None),
            "a restart starts afresh"
        );
        record(&mut reports, "t".into(), Report::Offline);
        assert_eq!(readings_per_s(&reports), (0, None));
    }
}
