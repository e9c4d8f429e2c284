//! Who is at the screen. Looking needs nothing by default (a wall screen on the plant
//! network); acting on an alert needs a login, checked against the argon2 hashes in
//! `access.users`. A login is a random session id in an HttpOnly, SameSite=Strict cookie,
//! kept in memory (a restart logs everyone out, which costs a login, never a change),
//! and every form that changes something carries the session's own token, so no other
//! site can submit it on the user's behalf.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::header::COOKIE;
use axum::http::HeaderMap;
use rand::RngCore;

use serde::{Deserialize, Serialize};

/// The cookie holding the session id.
pub const COOKIE_NAME: &str = "console_session";

/// How long a wrong password costs the one who typed it, so guessing is slow.
pub const WRONG_PASSWORD_DELAY: Duration = Duration::from_secs(1);

/// After this many wrong passwords for one name in a row...
const FAILURES_BEFORE_PAUSE: u32 = 5;
/// ...that name is refused, unchecked, for this long after the last one. A guesser who
/// does not wait for the delay above still gets five guesses a minute.
const PAUSE: Duration = Duration::from_secs(60);

/// Password checks that may run at once: each costs argon2's memory (19 MiB) and a core
/// for a moment, and a flood of logins must not take the machine.
pub const CONCURRENT_CHECKS: usize = 2;

/// Whether two tokens are the same, in a time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// How a login attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// A session opened: its id, for the cookie.
    Session(String),
    Refused,
    /// Too many wrong passwords for this name lately: refused unchecked for this long.
    Paused(Duration),
}

/// Parses a PHC string, saying what is wrong with it.
pub fn parse_hash(text: &str) -> Result<PasswordHash<'_>, String> {
    let hash = PasswordHash::new(text).map_err(|e| format!("not a PHC password hash ({e})"))?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(format!("{} is not an argon2 hash", hash.algorithm.as_str()));
    }
    Ok(hash)
}

/// The PHC string of `password` (argon2id, default parameters, a random salt).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// A person who may log in (`access.users`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// An argon2 PHC string, as `console hash-password` prints it.
    pub password_hash: String,
}

/// A person who logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// The token every changing form of this session carries.
    pub csrf: String,
    expires: Instant,
}

/// The configured users and the open sessions.
pub struct Access {
    users: Vec<User>,
    ttl: Duration,
    sessions: Mutex<HashMap<String, Session>>,
    /// Wrong passwords in a row by name, and when the last one came.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// Limits the password checks running at once ([`CONCURRENT_CHECKS`]).
    pub checks: tokio::sync::Semaphore,
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Access {
    pub fn new(users: Vec<User>, ttl: Duration) -> Self {
        Self {
            users,
            ttl,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            checks: tokio::sync::Semaphore::new(CONCURRENT_CHECKS),
        }
    }

    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks a name and password (slow by design: run it off the async threads) and
    /// opens a session.
    pub fn log_in(&self, name: &str, password: &str) -> Login {
        {
            let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((count, last)) = failures.get(name) {
                if *count >= FAILURES_BEFORE_PAUSE && last.elapsed() < PAUSE {
                    return Login::Paused(PAUSE - last.elapsed());
                }
            }
        }
        let user = self.users.iter().find(|u| u.name == name);
        // An unknown name costs the same hash as a known one, so timing tells nothing.
        let stored = user.map_or(DUMMY_HASH, |u| u.password_hash.as_str());
        let good = parse_hash(stored).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        });
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(user) = user.filter(|_| good) else {
            // Names nobody has are counted too (one guesser, many names): the table is
            // cleared of old entries so that it cannot grow without end.
            failures.retain(|_, (_, last)| last.elapsed() < PAUSE);
            let entry = failures
                .entry(name.to_owned())
                .or_insert((0, Instant::now()));
            *entry = (entry.0 + 1, Instant::now());
            return Login::Refused;
        };
        failures.remove(name);
        drop(failures);
        let id = random_token();
        let session = Session {
            user: user.name.clone(),
            csrf: random_token(),
            expires: Instant::now() + self.ttl,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(id.clone(), session);
        Login::Session(id)
    }

    /// The session a request's cookie names, if it is open.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = session_cookie(headers)?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(id)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    pub fn log_out(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(id);
        }
    }

    /// The `Set-Cookie` value of a new session.
    pub fn cookie(&self, id: &str) -> String {
        format!(
            "{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            self.ttl.as_secs()
        )
    }
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn cleared_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
}

/// The hash of a password nobody knows, checked for unknown names.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2W4TNkMJSDvoUZZR5RMVK0ST4U3qAWptHPg+pbNhcu4";

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        let hash = hash_password("s3cret horse").unwrap();
        Access::new(
            vec![User {
                name: "ana".into(),
                password_hash: hash,
            }],
            Duration::from_secs(60),
        )
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, value.parse().unwrap());
        headers
    }

    #[test]
    fn the_right_password_opens_a_session_and_a_wrong_one_does_not() {
        let access = access();
        assert_eq!(access.log_in("ana", "wrong"), Login::Refused);
        assert_eq!(access.log_in("bob", "s3cret horse"), Login::Refused);
        let Login::Session(id) = access.log_in("ana", "s3cret horse") else {
            panic!("the right password opens a session");
        };
        let session = access
            .session(&with_cookie(&format!("theme=dark; {COOKIE_NAME}={id}")))
            .unwrap();
        assert_eq!(session.user, "ana");
        assert_eq!(
            access.session(&with_cookie(&format!("{COOKIE_NAME}=x{id}"))),
            None
        );
        access.log_out(&with_cookie(&format!("{COOKIE_NAME}={id}")));
        assert_eq!(
            access.session(&with_cookie(&format!("{COOKIE_NAME}={id}"))),
            None
        );
    }

    #[test]
    fn five_wrong_passwords_pause_the_name_even_for_the_right_one() {
        let access = access();
        for _ in 0..FAILURES_BEFORE_PAUSE {
            assert_eq!(access.log_in("ana", "guess"), Login::Refused);
        }
        assert!(matches!(
            access.log_in("ana", "s3cret horse"),
            Login::Paused(_)
        ));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("abc", "ab"));
    }

    #[test]
    fn hashes_are_checked_for_what_they_are() {
        assert!(parse_hash("plain text").unwrap_err().contains("not a PHC"));
        assert!(parse_hash(DUMMY_HASH).is_ok());
        let cookie = access().cookie("abc");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    }
}
