//! Secrets as messages, logs and `--check-config` show them: that one is set, never
//! what it is. Written once so every binary hides the same things the same way.

/// A secret value, if set, replaced by `***`.
pub fn secret(value: &mut Option<String>) {
    if let Some(value) = value {
        *value = "***".to_owned();
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`; anything else as is.
pub fn url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{}{user}:***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        assert_eq!(
            url("postgres://telemetry:hunter2@db:5432/x"),
            "postgres://telemetry:***@db:5432/x"
        );
        assert_eq!(
            url("redis://:hunter2@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(url("redis://h:6379?user=a@b"), "redis://h:6379?user=a@b");
        for kept in [
            "redis://cache:6379",
            "postgres://user@db/x",
            "not a url",
            "",
        ] {
            assert_eq!(url(kept), kept);
        }
        let (mut set, mut unset) = (Some("hunter2".to_owned()), None);
        secret(&mut set);
        secret(&mut unset);
        assert_eq!((set.as_deref(), unset), (Some("***"), None));
    }
}
