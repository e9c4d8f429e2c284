//! Acknowledging and resolving alerts in the console: a login first, the session's own
//! form token, and then the same change `iotctl alerts` makes (guarded update,
//! `system_events`, the Kafka `alerts` record, Redis), with the operator's name and note.

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sqlx::PgPool;
use support::{client, config, create_topic, csrf, log_in, read_topic, start, PASSWORD, USER};

async fn open_alert(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO alerts (device_id, channel_id, rule, severity, value, threshold, value_ts, message) \
         VALUES ('furnace-01', 0, 'high', 'critical', 980.5, 950, now(), 'temperature above critical') \
         RETURNING alert_id",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_wrong_password_is_refused_plainly_and_slowly(pool: PgPool) {
    let started = start(config(&pool).await).await;
    let began = Instant::now();
    let response = client()
        .post(format!("{}/login", started.base))
        .form(&[("name", USER), ("password", "not the password")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "a wrong password costs a second"
    );
    assert!(response.headers().get("set-cookie").is_none());
    let body = response.text().await.unwrap();
    assert!(body.contains("Wrong name or password."), "{body}");
    let response = client()
        .post(format!("{}/login", started.base))
        .form(&[("name", "nobody"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "an unknown name is refused alike");
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_operator_acknowledges_and_resolves_with_a_note_as_iotctl_does(pool: PgPool) {
    let config = config(&pool).await;
    create_topic(&config.kafka.alerts_topic).await;
    let started = start(config).await;
    let id = open_alert(&pool).await;
    let action = format!("{}/alerts/{id}/ack", started.base);

    // Without a login: to the login form, and nothing changes.
    let response = client()
        .post(&action)
        .form(&[("csrf", "x"), ("note", "on it")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/login");

    let cookie = log_in(&started.base).await;
    let page = client()
        .get(format!("{}/alerts", started.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("data-alert=\"{id}\"")),
        "the alert is listed"
    );
    let token = csrf(&page);

    // Another site's form cannot know the session's token.
    let response = client()
        .post(&action)
        .header("cookie", &cookie)
        .form(&[("csrf", "forged"), ("note", "on it")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let state: String = sqlx::query_scalar("SELECT state::text FROM alerts WHERE alert_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "open", "a forged form changes nothing");

    let response = client()
        .post(&action)
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("note", "burner checked")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/alerts?notice="), "{location}");
    let (state, by): (String, Option<String>) =
        sqlx::query_as("SELECT state::text, acknowledged_by FROM alerts WHERE alert_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), by.as_deref()),
        ("acknowledged", Some(USER))
    );
    let (service, message, note): (String, String, Option<String>) = sqlx::query_as(
        "SELECT service, message, details->>'note' FROM system_events \
          WHERE kind = 'alert_acknowledged' AND (details->>'alert_id')::bigint = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(service, "console");
    assert!(
        message.contains(&format!("by {USER} (burner checked)")),
        "{message}"
    );
    assert_eq!(note.as_deref(), Some("burner checked"));
    let mut redis = support::redis().await;
    let open_key = contracts::redis::RedisKeys::new(&started.prefix).open_alerts();
    let view: Option<String> = redis.hget(&open_key, id).await.unwrap();
    let view: serde_json::Value = serde_json::from_str(&view.expect("in the open hash")).unwrap();
    assert_eq!(view["state"], "acknowledged");

    // Twice: refused, in words, on the alerts page.
    let response = client()
        .post(&action)
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("note", "")])
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/alerts?error="), "{location}");
    let page = client()
        .get(format!("{}{location}", started.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("is already acknowledged (by ana"),
        "the refusal is shown"
    );

    let response = client()
        .post(format!("{}/alerts/{id}/resolve", started.base))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("note", "thermocouple replaced")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let state: String = sqlx::query_scalar("SELECT state::text FROM alerts WHERE alert_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "resolved");
    let view: Option<String> = redis.hget(&open_key, id).await.unwrap();
    assert_eq!(view, None, "a resolved alert leaves the open hash");

    let topic = started.alerts_topic.clone();
    let records = tokio::task::spawn_blocking(move || read_topic(&topic, 2))
        .await
        .unwrap();
    let transitions: Vec<&str> = records
        .iter()
        .map(|(key, value)| {
            assert_eq!(key, "furnace-01");
            value["transition"].as_str().unwrap()
        })
        .collect();
    assert_eq!(transitions, ["acknowledged", "resolved"]);
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn with_viewing_by_login_every_page_asks_for_one(pool: PgPool) {
    let mut config = config(&pool).await;
    config.access.viewing = console::config::Viewing::Login;
    let started = start(config).await;
    for path in [
        "/",
        "/alerts",
        "/devices/furnace-01",
        "/pipeline",
        "/events",
    ] {
        let response = client()
            .get(format!("{}{path}", started.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "{path}");
        assert_eq!(response.headers()["location"], "/login", "{path}");
    }
    let login = client()
        .get(format!("{}/login", started.base))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = log_in(&started.base).await;
    let response = client()
        .get(format!("{}/", started.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let health = client()
        .get(format!("{}/livez", started.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health needs no login");
    started.console.stop().await;
}
