//! The pipeline as the console sees it: which of its sources answer, each device's
//! presence, and the operation log (`system_events`) as a timeline.

use axum::extract::State;
use axum::http::HeaderMap;
use maud::{html, Markup};

use crate::app::Shared;
use crate::layout::{age, time, PageError};

pub async fn page(State(state): State<Shared>, headers: HeaderMap) -> Result<Markup, PageError> {
    let snapshot = state.snapshot();
    let events = crate::plant::system_events(&state.pool, 50)
        .await
        .map_err(|e| PageError::history(&e))?;
    let session = state.access.session(&headers);
    let frame = state.frame(&snapshot, "Pipeline", "/pipeline", session.as_ref());
    let online = snapshot
        .presence
        .values()
        .filter(|p| p.last_seen.is_some())
        .count();
    let body = html! {
        h1 { "Pipeline" }
        ul {
            li { "PostgreSQL: " @if snapshot.postgres_up { "answers" } @else { "does not answer" } }
            li { "Redis (live values): " @if snapshot.redis_up { "answers" } @else { "does not answer" } }
            li { (online) " of " (snapshot.presence.len()) " devices online" }
            li { (snapshot.alerts.len()) " open alerts" }
        }
        h2 { "Devices" }
        div .table {
            table {
                thead { tr { th { "device" } th { "last reading" } } }
                tbody {
                    @for presence in snapshot.presence.values() {
                        tr { td { a href={ "/devices/" (presence.id) } { (presence.id) } } td { (age(presence.last_seen)) } }
                    }
                }
            }
        }
        h2 { "Operation log" }
        div .table {
            table {
                thead { tr { th { "time" } th { "service" } th { "level" } th { "kind" } th { "message" } } }
                tbody {
                    @for event in &events {
                        tr { td { (time(&event.at)) } td { (event.service) } td { (event.level) }
                             td { (event.kind) } td .message { (event.message) } }
                    }
                }
            }
        }
    };
    Ok(crate::layout::page(&frame, body))
}
