//! The pipeline as its parts say it is, gathered every `pipeline.interval` for every
//! viewer at once: each hop's rate (the agents from their retained health, the bridge
//! and the ingester from their `/metrics`, read through `observe` as `iotctl watch`
//! reads them), the ingester's consumer lag, dead letters by reason, each gateway's
//! health; and the latest dead letters themselves, from a consumer that tails
//! `sensors-dlq` from 20 records before its end.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contracts::status::Health;
use observe::agents::{AgentReports, Broker, AGENT_SILENT};
use observe::metrics::{metric_by_label, metric_sum, Rates};
use protocol::kafka::headers;
use protocol::topic::Topic;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;

/// The latest dead letters kept, newest first.
pub const LATEST_DEAD_LETTERS: usize = 20;

/// One service's figures, or why it did not answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Service {
    /// Its `/metrics` address.
    pub url: String,
    pub error: Option<String>,
    /// Per second over the last interval: frames produced (bridge), readings inserted
    /// (ingester).
    pub per_s: Option<f64>,
    pub total: Option<f64>,
    pub dead_letters: BTreeMap<String, f64>,
}

/// A gateway as its last report shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// Its name (its status topic's device level), or the topic if it has none.
    pub name: String,
    /// `site / line`.
    pub place: String,
    pub health: Health,
    /// Seconds since that report.
    pub age_s: u64,
    pub silent: bool,
}

/// A record of `sensors-dlq`, decoded for a person.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub reason: String,
    pub device: String,
    pub detail: String,
    pub source: String,
    /// The record's time, ms since the epoch.
    pub at_ms: Option<i64>,
}

/// What the pipeline page shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineView {
    /// Whether anything was gathered yet.
    pub gathered: bool,
    pub agents: usize,
    pub agent_readings_per_s: Option<f64>,
    pub agents_error: Option<String>,
    pub gateways: Vec<Gateway>,
    pub bridge: Service,
    pub ingester: Service,
    pub consumer_lag: Option<f64>,
    pub dead_letters: Vec<DeadLetter>,
    pub dead_letters_error: Option<String>,
}

/// What the agents' status topics say, followed once for the pipeline page and the
/// overview's device states.
pub fn follow_agents(config: &PipelineConfig) -> watch::Receiver<Result<AgentReports, String>> {
    let client = format!("console-{:08x}", rand::random::<u32>());
    // Checked readable when the configuration was loaded; a file gone since is the
    // broker's refusal to report, which the pipeline page shows.
    let credentials = config.mqtt_password_file.as_ref().and_then(|path| {
        service::secret_file::read(path)
            .map(|secret| (config.mqtt_user.clone(), secret))
            .ok()
    });
    let client_id = if config.mqtt_user.is_empty() {
        client
    } else {
        format!("{}@{client}", config.mqtt_user)
    };
    observe::agents::follow(Broker {
        host: config.mqtt_host.clone(),
        port: config.mqtt_port,
        prefix: config.topic_prefix.clone(),
        client_id,
        credentials,
    })
}

/// Gathers the view until `stop`; returns the receiver every page reads.
pub fn start(
    config: &PipelineConfig,
    kafka_brokers: &str,
    agents: watch::Receiver<Result<AgentReports, String>>,
    stop: CancellationToken,
) -> watch::Receiver<Arc<PipelineView>> {
    let (tx, rx) = watch::channel(Arc::new(PipelineView::default()));
    let latest = Arc::new(Mutex::new(DeadLetterTail::default()));
    if !config.dlq_topic.is_empty() {
        tokio::spawn(tail_dead_letters(
            kafka_brokers.to_owned(),
            config.dlq_topic.clone(),
            latest.clone(),
            stop.clone(),
        ));
    }
    let config = config.clone();
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let mut rates = Rates::default();
        let mut ticker = tokio::time::interval(config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let view = gather(&config, &http, &mut rates, &agents, &latest).await;
            tx.send_replace(Arc::new(view));
        }
    });
    rx
}

async fn gather(
    config: &PipelineConfig,
    http: &reqwest::Client,
    rates: &mut Rates,
    agents: &watch::Receiver<Result<AgentReports, String>>,
    latest: &Mutex<DeadLetterTail>,
) -> PipelineView {
    let mut view = PipelineView {
        gathered: true,
        ..PipelineView::default()
    };
    match &*agents.borrow() {
        Ok(reports) => {
            (view.agents, view.agent_readings_per_s) = observe::agents::readings_per_s(reports);
            let mut gateways: Vec<Gateway> = reports
                .gateways
                .iter()
                .map(|(topic, report)| Gateway {
                    name: Topic::parse(topic)
                        .map_or_else(|_| topic.clone(), |t| t.device.to_owned()),
                    place: Topic::parse(topic)
                        .map(|t| format!("{} / {}", t.site, t.line))
                        .unwrap_or_default(),
                    health: report.health.clone(),
                    age_s: report.seen.elapsed().as_secs(),
                    silent: report.seen.elapsed() >= AGENT_SILENT,
                })
                .collect();
            gateways.sort_by(|a, b| (&a.place, &a.name).cmp(&(&b.place, &b.name)));
            view.gateways = gateways;
        }
        Err(e) => view.agents_error = Some(e.clone()),
    }
    let (bridge, ingester) = tokio::join!(
        scrape(http, &config.bridge_metrics),
        scrape(http, &config.ingester_metrics)
    );
    view.bridge = service(
        &config.bridge_metrics,
        bridge,
        rates,
        ("bridge", "bridge_messages_produced_total"),
        "bridge_messages_dead_lettered_total",
    );
    view.ingester = service(
        &config.ingester_metrics,
        ingester.clone(),
        rates,
        ("ingester", "ingester_readings_inserted_total"),
        "ingester_records_dead_lettered_total",
    );
    view.consumer_lag = ingester
        .ok()
        .and_then(|text| metric_sum(&text, "ingester_consumer_lag"));
    let tail = latest.lock().unwrap_or_else(|e| e.into_inner());
    view.dead_letters = tail.records.iter().cloned().collect();
    view.dead_letters_error = tail.error.clone();
    view
}

async fn scrape(http: &reqwest::Client, base: &str) -> Result<String, String> {
    let response = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.text().await.map_err(|e| e.to_string())
}

fn service(
    url: &str,
    scraped: Result<String, String>,
    rates: &mut Rates,
    (key, counter): (&'static str, &str),
    dead_lettered: &str,
) -> Service {
    match scraped {
        Ok(text) => {
            let total = metric_sum(&text, counter);
            Service {
                url: url.to_owned(),
                error: None,
                per_s: total.and_then(|t| rates.rate(key, t)),
                total,
                dead_letters: metric_by_label(&text, dead_lettered, "reason")
                    .into_iter()
                    .filter(|(_, n)| *n > 0.0)
                    .collect(),
            }
        }
        Err(error) => Service {
            url: url.to_owned(),
            error: Some(error),
            ..Service::default()
        },
    }
}

/// The newest dead letters, and why they cannot be read if they cannot.
#[derive(Debug, Default)]
struct DeadLetterTail {
    records: VecDeque<DeadLetter>,
    error: Option<String>,
}

/// Reads `topic` from [`LATEST_DEAD_LETTERS`] records before each partition's end, then
/// follows it, keeping the newest; starts again after a failure.
async fn tail_dead_letters(
    brokers: String,
    topic: String,
    tail: Arc<Mutex<DeadLetterTail>>,
    stop: CancellationToken,
) {
    loop {
        let failed = tokio::select! {
            _ = stop.cancelled() => return,
            failed = follow(&brokers, &topic, &tail) => failed,
        };
        tail.lock().unwrap_or_else(|e| e.into_inner()).error = Some(failed);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Follows `topic` until a failure, which it returns in words.
async fn follow(brokers: &str, topic: &str, tail: &Mutex<DeadLetterTail>) -> String {
    let consumer: Arc<StreamConsumer> = match ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("console-dlq-{:08x}", rand::random::<u32>()),
        )
        .set("client.id", "console")
        .set("enable.auto.commit", "false")
        .set("socket.timeout.ms", "5000")
        .create()
    {
        Ok(consumer) => Arc::new(consumer),
        Err(e) => return format!("Kafka {brokers}: {e}"),
    };
    let start = {
        let consumer = consumer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || start_offsets(&consumer, &topic)).await
    };
    let assignment = match start {
        Ok(Ok(assignment)) => assignment,
        Ok(Err(e)) => return e,
        Err(e) => return e.to_string(),
    };
    if let Err(e) = consumer.assign(&assignment) {
        return format!("Kafka {brokers}: {e}");
    }
    tail.lock().unwrap_or_else(|e| e.into_inner()).error = None;
    loop {
        match consumer.recv().await {
            Ok(message) => {
                let header = |name: &str| {
                    message
                        .headers()
                        .and_then(|h| h.iter().find(|h| h.key == name))
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let record = DeadLetter {
                    reason: header(headers::DLQ_REASON),
                    device: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    detail: header(headers::DLQ_DETAIL),
                    source: header(headers::DLQ_SOURCE),
                    at_ms: message.timestamp().to_millis(),
                };
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                tail.records.push_front(record);
                tail.records.truncate(LATEST_DEAD_LETTERS);
            }
            Err(e) if service::kafka_connection::lost(&e) => {
                return format!("Kafka {brokers}: {e}")
            }
            Err(e) => tracing::debug!("sensors-dlq: {e}"),
        }
    }
}

/// Every partition of `topic` from [`LATEST_DEAD_LETTERS`] before its end.
fn start_offsets(consumer: &StreamConsumer, topic: &str) -> Result<TopicPartitionList, String> {
    let timeout = Duration::from_secs(5);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("Kafka: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} does not exist"));
    }
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| format!("Kafka: {e}"))?;
        let from = (high - LATEST_DEAD_LETTERS as i64).max(low);
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|e| e.to_string())?;
    }
    Ok(assignment)
}
