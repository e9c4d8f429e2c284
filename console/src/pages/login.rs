//! Logging in and out. A wrong name or password costs a second and says so plainly;
//! the check itself (argon2, slow on purpose) runs off the async threads.

use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use crate::auth::{cleared_cookie, same_token, Login, WRONG_PASSWORD_DELAY};
use crate::layout::PageError;
use crate::state::Shared;

#[derive(Debug, Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only a path of this console: a login must not send anyone elsewhere (`//host` and
/// `/\host` read as another site to a browser), and nothing that cannot be a header.
fn local(next: Option<&str>) -> &str {
    let safe = |path: &str| {
        path.starts_with('/')
            && !path.starts_with("//")
            && !path.contains('\\')
            && !path.chars().any(char::is_control)
    };
    match next {
        Some(path) if safe(path) => path,
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
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) =
        form.map_err(|_| PageError::bad_request("a login needs a name and a password"))?;
    let checker = state.clone();
    let (name, password) = (form.name.trim().to_owned(), form.password);
    let permit =
        state.access.checks.acquire().await.map_err(|_| {
            PageError::new(StatusCode::SERVICE_UNAVAILABLE, "the console is stopping")
        })?;
    let login = tokio::task::spawn_blocking(move || checker.access.log_in(&name, &password))
        .await
        .map_err(|_| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, "the login check failed"))?;
    drop(permit);
    let next = local(form.next.as_deref()).to_owned();
    match login {
        Login::Paused(wait) => {
            tracing::warn!(
                "login as {:?} refused: too many wrong passwords",
                form.name.trim()
            );
            let message = format!(
                "Too many wrong passwords for this name: try again in {} s.",
                wait.as_secs().max(1)
            );
            let page = login_page(&state, &headers, &next, Some(&message));
            Ok((StatusCode::TOO_MANY_REQUESTS, page).into_response())
        }
        Login::Session(id) => {
            tracing::info!("{} logged in", form.name.trim());
            Ok((
                [(header::SET_COOKIE, state.access.cookie(&id))],
                Redirect::to(&next),
            )
                .into_response())
        }
        Login::Refused => {
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

/// Ends the session, when the form is the session's own (another site cannot log
/// anyone out).
pub async fn log_out(
    State(state): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let own = form.is_ok_and(|Form(form)| {
        state
            .access
            .session(&headers)
            .is_some_and(|s| same_token(&s.csrf, &form.csrf))
    });
    if !own {
        return Redirect::to("/").into_response();
    }
    state.access.log_out(&headers);
    ([(header::SET_COOKIE, cleared_cookie())], Redirect::to("/")).into_response()
}

#[cfg(test)]
mod tests {
    use super::local;

    #[test]
    fn a_login_returns_only_to_this_console() {
        assert_eq!(
            local(Some("/devices/press-01?range=1h")),
            "/devices/press-01?range=1h"
        );
        for elsewhere in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "/\t/evil",
            "/a\r\nSet-Cookie: x",
        ] {
            assert_eq!(local(Some(elsewhere)), "/alerts", "{elsewhere:?}");
        }
        assert_eq!(local(None), "/alerts");
    }
}
