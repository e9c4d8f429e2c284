//! The agents' health, as each reports it on its gateway's retained MQTT `status` topic
//! (every 10 s by default), and each device's retained status: followed in the
//! background by one subscription, so a reader always has the latest report of every
//! gateway and the one before it, for rates, and every device's `online` or `offline`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use contracts::status::{DeviceStatus, GatewayStatus, Health, AGENT_KIND};
use protocol::topic::{Topic, TopicKind};
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

/// What the status topics said so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentReports {
    /// By gateway status topic.
    pub gateways: HashMap<String, AgentReport>,
    /// Each device's retained state (`online`, `offline`), by device id.
    pub devices: HashMap<String, String>,
}

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
    /// Under a gateway registry it must be `{user}@…`.
    pub client_id: String,
    /// User name and password, for a broker that authenticates.
    pub credentials: Option<(String, String)>,
}

/// Follows the agents' retained status messages in the background, until every receiver
/// is gone; the receiver always holds what arrived so far, or why the broker cannot be
/// read.
pub fn follow(broker: Broker) -> watch::Receiver<Result<AgentReports, String>> {
    let (tx, rx) = watch::channel(Ok(AgentReports::default()));
    let mut options = MqttOptions::new(broker.client_id, broker.host.clone(), broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    if let Some((user, password)) = broker.credentials {
        options.set_credentials(user, password);
    }
    let filter = protocol::topic::filter(&broker.prefix, TopicKind::Status)
        .map(|f| f.to_string())
        .unwrap_or_default();
    let address = format!("{}:{}", broker.host, broker.port);
    tokio::spawn(async move {
        let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
        let mut subscribed = false;
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) if !subscribed => {
                    subscribed = client.subscribe(&filter, QoS::AtMostOnce).await.is_ok();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let topic = publish.topic.clone();
                    let report = report_of(&publish.payload, &topic);
                    tx.send_modify(|state| {
                        // Messages flow again after a failure: start afresh.
                        if state.is_err() {
                            *state = Ok(AgentReports::default());
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
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        }
    });
    rx
}

fn record(reports: &mut AgentReports, topic: String, report: Report) {
    let gateways = &mut reports.gateways;
    match report {
        // A gateway gone offline: not counted.
        Report::Offline => {
            gateways.remove(&topic);
        }
        Report::Online(health) => {
            let health = *health;
            let sample = (health.readings as f64, health.uptime_s as f64);
            let entry = gateways.entry(topic).or_insert_with(|| AgentReport {
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
        Report::Device { device, state } => {
            reports.devices.insert(device, state);
        }
        Report::NotAnAgent => {}
    }
}

/// The gateways heard from within [`AGENT_SILENT`], and the readings per second they
/// sample together (none until one has reported twice).
pub fn readings_per_s(reports: &AgentReports) -> (usize, Option<f64>) {
    let live: Vec<&AgentReport> = reports
        .gateways
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
    /// A device's status.
    Device {
        device: String,
        state: String,
    },
    /// Something else on a status topic.
    NotAnAgent,
}

fn report_of(payload: &[u8], topic: &str) -> Report {
    let Ok(status) = serde_json::from_slice::<GatewayStatus>(payload) else {
        return Report::NotAnAgent;
    };
    if status.kind != AGENT_KIND {
        let device = serde_json::from_slice::<DeviceStatus>(payload).ok();
        return match (device, Topic::parse(topic)) {
            (Some(status), Ok(topic)) if !status.gateway.is_empty() => Report::Device {
                device: topic.device.to_owned(),
                state: status.state,
            },
            _ => Report::NotAnAgent,
        };
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
        let gateway = "plant/plant1/line-a/gw-1/status";
        let online = br#"{"state":"online","kind":"edge-agent","boot_id":"ab","health":{"readings":120,"uptime_s":10}}"#;
        let Report::Online(health) = report_of(online, gateway) else {
            panic!("an online agent");
        };
        assert_eq!((health.readings, health.uptime_s), (120, 10));
        let offline = br#"{"state":"offline","kind":"edge-agent","boot_id":"ab"}"#;
        assert_eq!(report_of(offline, gateway), Report::Offline);
        let device = br#"{"state":"offline","gateway":"gw-1","reason":"shutdown"}"#;
        assert_eq!(
            report_of(device, "plant/plant1/line-a/press-01/status"),
            Report::Device {
                device: "press-01".into(),
                state: "offline".into()
            }
        );
        assert_eq!(
            report_of(br#"{"state":"online"}"#, gateway),
            Report::NotAnAgent
        );
        assert_eq!(report_of(b"not json", gateway), Report::NotAnAgent);
    }

    #[test]
    fn rates_come_from_two_reports_of_one_boot() {
        let mut reports = AgentReports::default();
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
        let device = |state: &str| Report::Device {
            device: "press-01".into(),
            state: state.into(),
        };
        record(&mut reports, "d".into(), device("online"));
        record(&mut reports, "d".into(), device("offline"));
        assert_eq!(reports.devices["press-01"], "offline");
    }
}
