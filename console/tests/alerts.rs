//! Acknowledging and resolving alerts in the console: a login first, the session's own
//! form token, and then the same change `iotctl alerts` makes (guarded update,
//! `system_events`, the Kafka `alerts` record, Redis), with the operator's name and note.

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sqlx::PgPool;
use support::{config, create_topic, csrf, get, log_in, post, read_topic, start, PASSWORD, USER};

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

/// The alert's state and who acknowledged it.
async fn state_of(pool: &PgPool, id: i64) -> (String, Option<String>) {
    sqlx::query_as("SELECT state::text, acknowledged_by FROM alerts WHERE alert_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_wrong_password_is_refused_plainly_and_slowly(pool: PgPool) {
    let started = start(config(&pool).await).await;
    let login = format!("{}/login", started.base);
    let began = Instant::now();
    let refused = post(
        &login,
        None,
        &[("name", USER), ("password", "not the password")],
    )
    .await;
    assert_eq!(refused.status, 401);
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "a wrong password costs a second"
    );
    assert!(
        refused.body.contains("Wrong name or password."),
        "{}",
        refused.body
    );
    let unknown = post(&login, None, &[("name", "nobody"), ("password", PASSWORD)]).await;
    assert_eq!(unknown.status, 401, "an unknown name is refused alike");
    let nameless = post(&login, None, &[("password", PASSWORD)]).await;
    assert_eq!(nameless.status, 400);
    assert!(nameless
        .body
        .contains("a login needs a name and a password"));
    // Elsewhere after a login? Only here.
    let away = post(
        &login,
        None,
        &[
            ("name", USER),
            ("password", PASSWORD),
            ("next", "/\\evil.example"),
        ],
    )
    .await;
    assert_eq!((away.status, away.location.as_str()), (303, "/alerts"));
    started.console.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_operator_acknowledges_and_resolves_with_a_note_as_iotctl_does(pool: PgPool) {
    let config = config(&pool).await;
    create_topic(&config.kafka.alerts_topic).await;
    let started = start(config).await;
    let id = open_alert(&pool).await;
    let ack = format!("{}/alerts/{id}/ack", started.base);

    // Without a login: to the login form, and nothing changes.
    let anonymous = post(&ack, None, &[("csrf", "x"), ("note", "on it")]).await;
    assert_eq!(
        (anonymous.status, anonymous.location.as_str()),
        (303, "/login")
    );

    let cookie = log_in(&started.base).await;
    let cookie = Some(cookie.as_str());
    let page = get(&format!("{}/alerts", started.base), cookie).await.body;
    assert!(
        page.contains(&format!("data-alert=\"{id}\"")),
        "the alert is listed"
    );
    let token = csrf(&page);

    // A form without its token: a sentence, not the framework's text.
    let incomplete = post(&ack, cookie, &[("note", "on it")]).await;
    assert_eq!(incomplete.status, 400);
    assert!(
        incomplete.body.contains("lacks its token"),
        "{}",
        incomplete.body
    );

    // Another site's form cannot know the session's token.
    let forged = post(&ack, cookie, &[("csrf", "forged"), ("note", "on it")]).await;
    assert_eq!(forged.status, 403);
    assert_eq!(
        state_of(&pool, id).await.0,
        "open",
        "a forged form changes nothing"
    );

    let acknowledged = post(
        &ack,
        cookie,
        &[("csrf", &token), ("note", "burner checked")],
    )
    .await;
    assert_eq!(acknowledged.status, 303);
    assert!(
        acknowledged.location.starts_with("/alerts?notice="),
        "{}",
        acknowledged.location
    );
    let (state, by) = state_of(&pool, id).await;
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
    let again = post(&ack, cookie, &[("csrf", &token), ("note", "")]).await;
    assert!(
        again.location.starts_with("/alerts?error="),
        "{}",
        again.location
    );
    let page = get(&format!("{}{}", started.base, again.location), cookie)
        .await
        .body;
    assert!(
        page.contains("is already acknowledged (by ana"),
        "the refusal is shown"
    );

    let resolve = format!("{}/alerts/{id}/resolve", started.base);
    let resolved = post(
        &resolve,
        cookie,
        &[("csrf", &token), ("note", "thermocouple replaced")],
    )
    .await;
    assert_eq!(resolved.status, 303);
    assert_eq!(state_of(&pool, id).await.0, "resolved");
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
        let refused = get(&format!("{}{path}", started.base), None).await;
        assert_eq!(
            (refused.status, refused.location.as_str()),
            (303, "/login"),
            "{path}"
        );
    }
    assert_eq!(
        get(&format!("{}/login", started.base), None).await.status,
        200
    );
    let cookie = log_in(&started.base).await;
    let overview = get(&format!("{}/", started.base), Some(&cookie)).await;
    assert_eq!(overview.status, 200);
    let health = get(&format!("{}/livez", started.base), None).await;
    assert_eq!(health.status, 200, "health needs no login");
    started.console.stop().await;
}
