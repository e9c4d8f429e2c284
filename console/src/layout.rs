//! The frame every page shares (navigation, the "live view paused" and "history
//! unavailable" banners, the embedded stylesheet and script) and the error page, which
//! says what went wrong in words and never shows internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::auth::Session;

/// The pages in the navigation, by path.
const NAV: [(&str, &str); 3] = [
    ("/", "Overview"),
    ("/alerts", "Alerts"),
    ("/pipeline", "Pipeline"),
];

/// What the frame needs to know about the moment.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The navigation entry to mark current.
    pub current: &'a str,
    pub session: Option<&'a Session>,
    pub redis_up: bool,
    pub postgres_up: bool,
    pub open_alerts: usize,
}

pub fn page(frame: &Frame<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · plant console" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                header {
                    strong { "Plant console" }
                    nav {
                        @for (path, name) in NAV {
                            a href=(path) aria-current=[(path == frame.current).then_some("page")] {
                                (name)
                                @if path == "/alerts" {
                                    " (" span id="console:open-alerts" { (frame.open_alerts) } " open)"
                                }
                            }
                            " "
                        }
                    }
                    @if let Some(session) = frame.session {
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            (session.user) " · "
                            button type="submit" { "Log out" }
                        }
                    } @else {
                        a href="/login" style="margin-left:auto" { "Log in" }
                    }
                }
                div id="console:live-paused" .banner role="status" hidden[frame.redis_up] {
                    "Live view paused: Redis does not answer. Values shown are the last known; updates resume by themselves."
                }
                div id="console:history-unavailable" .banner role="status" hidden[frame.postgres_up] {
                    "History unavailable: PostgreSQL does not answer."
                }
                main { (body) }
                script src="/static/console.js" {}
            }
        }
    }
}

/// A page that could not be shown, with its status and a sentence for a person.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// PostgreSQL failed: logged in full, shown as a sentence.
    pub fn history(error: &sqlx::Error) -> Self {
        tracing::warn!("PostgreSQL: {error}");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "History unavailable: PostgreSQL does not answer. The overview still shows live values.",
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.status.as_u16()) " · plant console" }
                    link rel="stylesheet" href="/static/console.css";
                }
                body {
                    header { a href="/" { "Plant console" } }
                    main {
                        h1 { (self.status.canonical_reason().unwrap_or("Error")) }
                        p .error { (self.message) }
                        p { a href="/" { "Back to the overview" } }
                    }
                }
            }
        };
        (self.status, body).into_response()
    }
}

/// Time as people on the floor read it: `2026-12-04 21:05:09 UTC`.
pub fn time(t: &sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How long ago `ts` (ms) was at `now`: `12 s ago`, `3 min ago`, `2 h ago`, `never`, as
/// the script writes it on the overview.
pub fn ago(ts: Option<i64>, now: i64) -> String {
    match ts {
        None => "never".to_owned(),
        Some(ts) => {
            let s = (now - ts).max(0) / 1000;
            match s {
                0..60 => format!("{s} s ago"),
                60..3600 => format!("{} min ago", s / 60),
                _ => format!("{} h ago", s / 3600),
            }
        }
    }
}

/// How long ago `ts` (ms) was, now.
pub fn age(ts: Option<i64>) -> String {
    ago(ts, service::clock::now_ms_i64())
}
