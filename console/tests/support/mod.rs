//! A console started in the test process against the stack's PostgreSQL (the test's own
//! database), Redis (under the test's own prefix) and Kafka (the test's own alerts
//! topic), and the ways the tests put live values where the ingester puts them.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use console::config::{ConsoleConfig, User};
use console::Console;
use contracts::redis::{LatestValue, RedisKeys};
use redis::AsyncCommands;
use sqlx::PgPool;

pub const USER: &str = "ana";
pub const PASSWORD: &str = "correct horse battery";

pub struct Started {
    pub console: Console,
    pub base: String,
    pub prefix: String,
    pub alerts_topic: String,
}

/// The console's configuration for this test: its database, a fresh Redis prefix and
/// alerts topic, one user, a random port.
pub async fn config(pool: &PgPool) -> ConsoleConfig {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut config = ConsoleConfig::default();
    config.database.url = testkit::database_url_of(&db);
    config.redis.url = testkit::redis_url();
    config.redis.prefix = testkit::unique_name("console");
    config.kafka.brokers = testkit::kafka_brokers();
    config.kafka.alerts_topic = testkit::unique_name("alerts");
    config.live.interval = Duration::from_millis(100);
    // Nothing of the pipeline page's sources: a test that wants them sets them.
    config.pipeline.mqtt_port = testkit::free_port();
    config.pipeline.bridge_metrics = format!("http://127.0.0.1:{}", testkit::free_port());
    config.pipeline.ingester_metrics = format!("http://127.0.0.1:{}", testkit::free_port());
    config.pipeline.dlq_topic = String::new();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.access.users = vec![User {
        name: USER.to_owned(),
        password_hash: console::auth::hash_password(PASSWORD).unwrap(),
    }];
    config
}

pub async fn start(config: ConsoleConfig) -> Started {
    let prefix = config.redis.prefix.clone();
    let alerts_topic = config.kafka.alerts_topic.clone();
    let console = Console::start(config).await.expect("the console starts");
    let base = format!("http://{}", console.addr);
    Started {
        console,
        base,
        prefix,
        alerts_topic,
    }
}

/// A client that shows redirects instead of following them.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A channel's current value and the device's last-seen time, as the ingester writes
/// them.
pub async fn put_latest(prefix: &str, device: &str, channel: i16, value: f32) {
    put_latest_at(prefix, device, channel, value, service::clock::now_ms_i64()).await;
}

/// [`put_latest`] of a reading made at `now` (ms).
pub async fn put_latest_at(prefix: &str, device: &str, channel: i16, value: f32, now: i64) {
    let keys = RedisKeys::new(prefix);
    let latest = LatestValue {
        ts: now,
        v: Some(value),
        q: 0,
        boot: "00000000000000aa".into(),
        seq: now,
        synced: true,
        boot_seen_us: Some(1),
    };
    let mut redis = redis().await;
    let _: () = redis
        .hset(
            keys.latest(device),
            channel,
            serde_json::to_string(&latest).unwrap(),
        )
        .await
        .unwrap();
    let _: () = redis.set(keys.last_seen(device), now).await.unwrap();
}

/// What a request came back with: its status, `Location` header (empty if none) and body.
pub struct Answer {
    pub status: u16,
    pub location: String,
    pub body: String,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Answer {
        status,
        location,
        body: response.text().await.unwrap(),
    }
}

/// GET `url`, with the session `cookie` if one is given.
pub async fn get(url: &str, cookie: Option<&str>) -> Answer {
    let mut request = client().get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    answer(request.send().await.unwrap()).await
}

/// POST `form` to `url`, with the session `cookie` if one is given.
pub async fn post(url: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Answer {
    let mut request = client().post(url).form(form);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    answer(request.send().await.unwrap()).await
}

/// GETs `url` until its body satisfies `done` or `within` passes; the last body.
pub async fn get_until(url: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let body = client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if done(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The HTML of the element whose `id` is `id`, up to its closing tag (the overview's
/// tiles and device cards hold no element of their own kind).
pub fn element<'a>(page: &'a str, id: &str) -> &'a str {
    let at = page
        .find(&format!(" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id} in the page"));
    let start = page[..at].rfind('<').unwrap();
    let tag: String = page[start + 1..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let end = page[start..]
        .find(&format!("</{tag}>"))
        .map_or(page.len(), |e| start + e);
    &page[start..end]
}

pub fn kafka() -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", testkit::kafka_brokers());
    config
}

/// Partitions of each test's private alerts topic.
pub const ALERT_PARTITIONS: i32 = 2;

pub async fn create_topic(name: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = kafka().create().unwrap();
    let topic = NewTopic::new(name, ALERT_PARTITIONS, TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// Every record of `topic` (created by [`create_topic`]) from its start, read by
/// assignment, until `expected` arrived or 15 s passed: (key, JSON value).
pub fn read_topic(topic: &str, expected: usize) -> Vec<(String, serde_json::Value)> {
    read_topic_until(topic, |records| records.len() >= expected)
}

/// [`read_topic`] until what came satisfies `enough`, or 15 s passed.
pub fn read_topic_until(
    topic: &str,
    enough: impl Fn(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = kafka()
        .set("group.id", testkit::unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..ALERT_PARTITIONS {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !enough(&records) && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let value = serde_json::from_slice(message.payload().unwrap_or_default()).unwrap();
            records.push((key, value));
        }
    }
    records
}

/// Logs in as [`USER`]: the session cookie (`name=value`).
pub async fn log_in(base: &str) -> String {
    let response = client()
        .post(format!("{base}/login"))
        .form(&[("name", USER), ("password", PASSWORD), ("next", "/alerts")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "a right password logs in");
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token in a page's forms.
pub fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf token")
        + 19;
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}
