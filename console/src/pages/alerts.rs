//! Alerts: open, acknowledged and resolved, filtered by device, severity, state and
//! age; acknowledged and resolved here by a logged-in person with a note, through the
//! same code as `iotctl alerts ack|resolve` (`operations::alerts`). The table reloads
//! itself when the open alerts change (`alerts_version` on `/events`).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use operations::alerts::{self as ops, Actor, AlertRow, ChangeError, Filter, Transition};
use serde::Deserialize;
use sqlx::types::chrono::DateTime;

use crate::auth::{same_token, Session};
use crate::layout::{time, PageError};
use crate::state::Shared;

const STATES: [&str; 5] = ["unresolved", "open", "acknowledged", "resolved", "all"];
const SEVERITIES: [&str; 2] = ["warning", "critical"];

/// The filters as given, checked.
struct Filters {
    device: String,
    severity: String,
    state: String,
    since: String,
    filter: Filter,
}

fn parse(query: &HashMap<String, String>) -> Result<Filters, PageError> {
    const KNOWN: [&str; 7] = [
        "device", "severity", "state", "since", "fragment", "notice", "error",
    ];
    if let Some(unknown) = query.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(PageError::bad_request(format!(
            "unknown parameter {unknown:?}: alerts take device, severity, state and since"
        )));
    }
    let get = |key: &str| {
        query
            .get(key)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let (device, severity, state, since) =
        (get("device"), get("severity"), get("state"), get("since"));
    let mut filter = Filter {
        limit: 200,
        ..Filter::default()
    };
    if !device.is_empty() {
        protocol::validate_id(&device)
            .map_err(|e| PageError::bad_request(format!("device {device:?}: {e}")))?;
        filter.devices.push(device.clone());
    }
    if !severity.is_empty() {
        if !SEVERITIES.contains(&severity.as_str()) {
            return Err(PageError::bad_request(format!(
                "severity {severity:?} is not warning or critical"
            )));
        }
        filter.severities.push(severity.clone());
    }
    match state.as_str() {
        "" | "unresolved" => {}
        "all" => filter.resolved = true,
        "open" | "acknowledged" | "resolved" => {
            filter.resolved = true;
            filter.states.push(state.clone());
        }
        other => {
            return Err(PageError::bad_request(format!(
                "state {other:?} is not one of {}",
                STATES.join(", ")
            )))
        }
    }
    if !since.is_empty() {
        let age: Duration = humantime::parse_duration(&since).map_err(|e| {
            PageError::bad_request(format!(
                "since {since:?} is not a duration such as 24h ({e})"
            ))
        })?;
        let since_ms = i64::try_from(age.as_millis())
            .ok()
            .and_then(|age| service::clock::now_ms_i64().checked_sub(age))
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| PageError::bad_request(format!("since {since:?} is too long")))?;
        filter.since = Some(since_ms);
    }
    Ok(Filters {
        device,
        severity,
        state,
        since,
        filter,
    })
}

pub async fn page(
    State(state): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let parsed = parse(&query)?;
    let session = state.access.session(&headers);
    let rows = ops::list(&state.pool, &parsed.filter)
        .await
        .map_err(|e| PageError::history(&e))?;
    let table = table(&rows, session.as_ref());
    if query.contains_key("fragment") {
        return Ok(table.into_response());
    }
    let snapshot = state.snapshot();
    let devices: Vec<&str> = snapshot
        .plant
        .iter()
        .map(|d| d.device_id.as_str())
        .collect();
    let frame = state.frame(&snapshot, "Alerts", "/alerts", session.as_ref());
    let body = html! {
        h1 { "Alerts" }
        @if let Some(notice) = query.get("notice") { p .notice role="status" { (notice) } }
        @if let Some(error) = query.get("error") { p .error role="alert" { (error) } }
        form .filters method="get" action="/alerts" {
            label { "Device"
                select name="device" {
                    option value="" { "all" }
                    @for d in &devices { option value=(d) selected[*d == parsed.device] { (d) } }
                }
            }
            label { "Severity"
                select name="severity" {
                    option value="" { "all" }
                    @for s in SEVERITIES { option value=(s) selected[s == parsed.severity] { (s) } }
                }
            }
            label { "State"
                select name="state" {
                    @for s in STATES { option value=(s) selected[s == parsed.state || (parsed.state.is_empty() && s == "unresolved")] { (s) } }
                }
            }
            label { "Opened within" input name="since" value=(parsed.since) placeholder="e.g. 24h" size="8"; }
            button type="submit" { "Filter" }
        }
        @if session.is_none() {
            p { @if state.access.has_users() { a href="/login" { "Log in" } " to acknowledge or resolve." }
                @else { "Nobody is configured to acknowledge alerts here (access.users)." } }
        }
        div id="console:alerts-live" { (table) }
    };
    Ok(crate::layout::page(&frame, body).into_response())
}

fn table(rows: &[AlertRow], session: Option<&Session>) -> Markup {
    html! {
        @if rows.is_empty() {
            p { "No alerts match." }
        } @else {
            div .table {
                table {
                    thead { tr { th { "id" } th { "opened" } th { "device" } th { "channel" } th { "rule" }
                        th { "severity" } th { "state" } th { "value" } th { "message" } th { "action" } } }
                    tbody {
                        @for row in rows {
                            tr data-alert=(row.alert_id) data-state=(row.state) {
                                td { (row.alert_id) }
                                td { (time(&row.opened_at)) }
                                td { a href={ "/devices/" (row.device_id) } { (row.device_id) } }
                                td { (row.channel_name()) }
                                td { (row.rule) }
                                td class={ "sev-" (row.severity) } {
                                    @if row.severity == "critical" { "■ " } @else { "▲ " } (row.severity)
                                }
                                td .state {
                                    (row.state)
                                    @if let Some(by) = &row.acknowledged_by { " by " (by) }
                                }
                                td { (row.value.map(|v| row.quantity(v)).unwrap_or_default()) }
                                td .message { (row.message) }
                                td { (actions(row, session)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn actions(row: &AlertRow, session: Option<&Session>) -> Markup {
    let Some(session) = session else {
        return html! {};
    };
    html! {
        @if row.state != "resolved" {
            form .inline method="post" action={ "/alerts/" (row.alert_id) "/" (if row.state == "open" { "ack" } else { "resolve" }) } {
                input type="hidden" name="csrf" value=(session.csrf);
                input name="note" placeholder="note" size="12" aria-label="note";
                @if row.state == "open" {
                    button type="submit" name="do" value="ack" { "Acknowledge" }
                }
                button type="submit" name="do" value="resolve" formaction={ "/alerts/" (row.alert_id) "/resolve" } { "Resolve" }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ActForm {
    csrf: String,
    #[serde(default)]
    note: String,
}

/// `POST /alerts/{id}/ack|resolve`: a logged-in person's change, announced like
/// iotctl's; the outcome is shown on the alerts page.
pub async fn act(
    State(state): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(|_| {
        PageError::bad_request("this form lacks its token; reload the alerts page and try again")
    })?;
    let transition = match action.as_str() {
        "ack" => Transition::Acknowledge,
        "resolve" => Transition::Resolve,
        other => {
            return Err(PageError::not_found(format!(
                "there is no action {other:?}"
            )))
        }
    };
    let id: i64 = id
        .parse()
        .map_err(|_| PageError::bad_request(format!("alert id {id:?} is not a number")))?;
    let Some(session) = state.access.session(&headers) else {
        return Ok(Redirect::to("/login").into_response());
    };
    if !same_token(&form.csrf, &session.csrf) {
        return Err(PageError::new(
            axum::http::StatusCode::FORBIDDEN,
            "This form is from another session. Reload the alerts page and try again.",
        ));
    }
    let note = form.note.trim();
    if note.chars().count() > 500 {
        return Err(PageError::bad_request(
            "the note is longer than 500 characters",
        ));
    }
    let actor = Actor {
        service: "console",
        by: Some(&session.user),
        note: (!note.is_empty()).then_some(note),
    };
    let changed = match ops::change(&state.pool, id, transition, &actor).await {
        Ok(changed) => changed,
        Err(ChangeError::Refused(why)) => return Ok(back("error", &why)),
        Err(ChangeError::Database { what, source }) => {
            tracing::warn!("{what}: {source}");
            return Ok(back(
                "error",
                &format!("alert {id} was not changed: PostgreSQL does not answer"),
            ));
        }
    };
    let kafka = ops::announce_on_kafka(
        &state.producer,
        &state.alerts_topic,
        &changed.event,
        Duration::from_secs(10),
    );
    let redis = async {
        let mut connection = state.redis.get_multiplexed_async_connection().await?;
        ops::announce_in_redis(&mut connection, &state.keys, &changed.event, &state.pool).await
    };
    let (kafka, redis) = tokio::join!(kafka, redis);
    let mut problems = Vec::new();
    if let Err(e) = kafka {
        tracing::warn!("alert {id}: Kafka record not sent: {e}");
        problems.push("its Kafka record was not sent (notifiers will not hear of it)");
    }
    if let Err(e) = redis {
        tracing::warn!("alert {id}: Redis not updated: {e}");
        problems.push("Redis was not updated (the ingester rebuilds it)");
    }
    if problems.is_empty() {
        Ok(back("notice", &changed.message))
    } else {
        Ok(back(
            "error",
            &format!("{}, but {}", changed.message, problems.join(" and ")),
        ))
    }
}

fn back(kind: &str, text: &str) -> Response {
    let query = serde_urlencoded::to_string([(kind, text)]).unwrap_or_default();
    Redirect::to(&format!("/alerts?{query}")).into_response()
}
