//! Logging in and out. A wrong name or password costs a second and says so plainly;
//! the check itself (argon2, slow on purpose) runs off the async threads.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use crate::auth::{cleared_cookie, WRONG_PASSWORD_DELAY};
use crate::layout::PageError;
use crate::state::Shared;

#[derive(Debug, Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only a path of this console: a login must not send anyone elsewhere.
fn local(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") => path,
        _ => "/alerts",
    }
}

pub async fn form(
    State(state): State<Shared>,
    Query(next): Query<Next>,
    headers: HeaderMap,
) -> Markup {
    login_page(&state, &headers, local(next.next.as_deref()), None)
}

fn login_page(state: &Shared, headers: &HeaderMap, next: &str, error: Option<&str>) -> Markup {
    let snapshot = state.snapshot();
    let session = state.access.session(headers);
    let frame = state.frame(&snapshot, "Log in", "/login", session.as_ref());
    let body = html! {
        h1 { "Log in" }
        @if let Some(error) = error { p .error role="alert" { (error) } }
        @if !state.access.has_users() {
            p .notice { "Nobody is configured to log in here: add users to access.users (see `console hash-password`)." }
        }
        form method="post" action="/login" {
            input type="hidden" name="next" value=(next);
            p { label { "Name" input name="name" autocomplete="username" required; } }
            p { label { "Password" input name="password" type="password" autocomplete="current-password" required; } }
            p { button type="submit" { "Log in" } }
        }
    };
    crate::layout::page(&frame, body)
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    next: Option<String>,
}

pub async fn submit(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    let checker = state.clone();
    let (name, password) = (form.name.trim().to_owned(), form.password);
    let session = tokio::task::spawn_blocking(move || checker.access.log_in(&name, &password))
        .await
        .map_err(|_| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, "the login check failed"))?;
    let next = local(form.next.as_deref()).to_owned();
    match session {
        Some(id) => {
            tracing::info!("{} logged in", form.name.trim());
            Ok((
                [(header::SET_COOKIE, state.access.cookie(&id))],
                Redirect::to(&next),
            )
                .into_response())
        }
        None => {
            tracing::warn!("failed login as {:?}", form.name.trim());
            metrics::counter!("console_failed_logins_total").increment(1);
            tokio::time::sleep(WRONG_PASSWORD_DELAY).await;
            let page = login_page(&state, &headers, &next, Some("Wrong name or password."));
            Ok((StatusCode::UNAUTHORIZED, page).into_response())
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

pub async fn log_out(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if state
        .access
        .session(&headers)
        .is_some_and(|s| s.csrf == form.csrf)
    {
        state.access.log_out(&headers);
    }
    ([(header::SET_COOKIE, cleared_cookie())], Redirect::to("/")).into_response()
}
