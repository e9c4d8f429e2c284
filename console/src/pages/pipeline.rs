//! The pipeline page: each hop's rate, the ingester's consumer lag, dead letters by
//! reason with the latest ones decoded, each gateway's health, every device's last
//! reading, and the operation log (`system_events`) as a timeline. The figures come
//! from the shared pipeline view (`crate::pipeline`), the log from PostgreSQL.

use axum::extract::State;
use axum::http::HeaderMap;
use maud::{html, Markup};

use crate::layout::{age, time, PageError};
use crate::pipeline::Service;
use crate::state::Shared;

fn rate(per_s: Option<f64>) -> String {
    match per_s {
        None => "…".to_owned(),
        Some(r) if r < 10.0 => format!("{r:.1}/s"),
        Some(r) => format!("{r:.0}/s"),
    }
}

fn count(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.0}"))
}

fn hop(name: &str, what: &str, service: &Service) -> Markup {
    html! {
        tr {
            td { (name) }
            @if let Some(error) = &service.error {
                td colspan="3" .error { "no answer at " (service.url) "/metrics: " (error) }
            } @else {
                td { (rate(service.per_s)) " " (what) }
                td { (count(service.total)) }
                td {
                    @if service.dead_letters.is_empty() { "none" }
                    @for (reason, n) in &service.dead_letters { (reason) " " (format!("{n:.0}")) " " }
                }
            }
        }
    }
}

pub async fn page(State(state): State<Shared>, headers: HeaderMap) -> Result<Markup, PageError> {
    let snapshot = state.snapshot();
    let view = state.pipeline.borrow().clone();
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
            li { (online) " of " (snapshot.presence.len()) " devices online; " (snapshot.alerts.len()) " open alerts" }
        }
        h2 { "Hops" }
        @if !view.gathered { p { "Gathering the first figures…" } }
        div .table {
            table #hops {
                thead { tr { th { "hop" } th { "rate" } th { "so far" } th { "dead letters by reason" } } }
                tbody {
                    tr {
                        td { "agents (" (view.agents) " gateways)" }
                        @if let Some(error) = &view.agents_error {
                            td colspan="3" .error { (error) }
                        } @else {
                            td { (rate(view.agent_readings_per_s)) " readings sampled" }
                            td { "–" }
                            td { "–" }
                        }
                    }
                    (hop("bridge: MQTT → Kafka", "frames", &view.bridge))
                    (hop("ingester: Kafka → PostgreSQL", "readings", &view.ingester))
                    tr { td { "ingester's consumer lag" } td colspan="3" { (count(view.consumer_lag)) " records" } }
                }
            }
        }
        h2 { "Gateways" }
        @if view.gateways.is_empty() { p { "No gateway has reported its health yet." } }
        @else {
            div .table {
                table #gateways {
                    thead { tr { th { "gateway" } th { "site / line" } th { "broker" } th { "uptime" } th { "readings" } th { "queue" }
                        th { "awaiting confirmation" } th { "dropped" } th { "resent" } th { "reported" } } }
                    tbody {
                        @for g in &view.gateways {
                            tr {
                                td { (g.name) }
                                td { (g.place) }
                                td { @if g.health.connected { "connected" } @else { "disconnected" } }
                                td { (g.health.uptime_s) " s" }
                                td { (g.health.readings) }
                                td { (g.health.queue_records) " frames, " (g.health.queue_bytes / 1024) " KiB" }
                                td { (g.health.awaiting_confirm) }
                                td { (g.health.dropped_frames) " frames" }
                                td { (g.health.resent_frames) }
                                td { (g.age_s) " s ago" @if g.silent { " (silent)" } }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Latest dead letters" }
        @if let Some(error) = &view.dead_letters_error { p .error { (error) } }
        @if view.dead_letters.is_empty() { p { "None." } }
        @else {
            div .table {
                table #dead-letters {
                    thead { tr { th { "time" } th { "reason" } th { "device" } th { "detail" } th { "by" } } }
                    tbody {
                        @for d in &view.dead_letters {
                            tr {
                                td { @if let Some(t) = d.at_ms.and_then(sqlx::types::chrono::DateTime::from_timestamp_millis) { (time(&t)) } }
                                td { (d.reason) }
                                td { (d.device) }
                                td .message { (d.detail) }
                                td { (d.source) }
                            }
                        }
                    }
                }
            }
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
