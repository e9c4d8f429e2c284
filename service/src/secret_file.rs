//! Reading a secret from a file, the one way every binary takes a password: never from
//! the command line (other users see it in `ps`), and never from a file others can read.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a secret file was refused; its text names the file and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFileError {
    Unreadable {
        path: PathBuf,
        error: String,
    },
    /// Group or others may read or write it.
    Exposed {
        path: PathBuf,
        mode: u32,
    },
    Empty(PathBuf),
}

impl fmt::Display for SecretFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            Self::Exposed { path, mode } => write!(
                f,
                "{} has mode {mode:04o}, so others can read it: `chmod 600 {}`",
                path.display(),
                path.display()
            ),
            Self::Empty(path) => write!(f, "{} holds no secret", path.display()),
        }
    }
}

impl std::error::Error for SecretFileError {}

/// The file's first line, without its line ending, if only its owner may read it.
pub fn read(path: &Path) -> Result<String, SecretFileError> {
    let unreadable = |error: std::io::Error| SecretFileError::Unreadable {
        path: path.to_owned(),
        error: error.to_string(),
    };
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let secret = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if secret.is_empty() {
        return Err(SecretFileError::Empty(path.to_owned()));
    }
    Ok(secret.to_owned())
}

/// What is wrong with a `password` / `password_file` pair of settings under `section`
/// (`mqtt`): both given, or a file [`read`] refuses.
pub fn setting_problem(section: &str, has_password: bool, file: Option<&Path>) -> Option<String> {
    let file = file?;
    if has_password {
        return Some(format!(
            "{section}.password_file: {section}.password is set too; keep the file alone"
        ));
    }
    read(file)
        .err()
        .map(|e| format!("{section}.password_file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("secret-file-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn an_owner_only_file_gives_its_first_line() {
        assert_eq!(read(&file("ok", "s3cret\n", 0o600)).unwrap(), "s3cret");
        assert_eq!(
            read(&file("crlf", "s3cret\r\nmore\n", 0o400)).unwrap(),
            "s3cret"
        );
    }

    #[test]
    fn exposed_empty_and_missing_files_are_refused_by_name() {
        let exposed = file("exposed", "s3cret\n", 0o644);
        let error = read(&exposed).unwrap_err();
        assert_eq!(
            error,
            SecretFileError::Exposed {
                path: exposed.clone(),
                mode: 0o644
            }
        );
        assert!(error.to_string().contains("chmod 600"), "{error}");
        assert!(matches!(
            read(&file("empty", "\n", 0o600)),
            Err(SecretFileError::Empty(_))
        ));
        let missing = Path::new("/nonexistent/secret");
        let error = read(missing).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/secret"),
            "{error}"
        );
    }

    #[test]
    fn a_password_setting_is_the_file_alone_and_a_file_read_would_take() {
        let good = file("setting", "s3cret\n", 0o600);
        assert_eq!(setting_problem("mqtt", false, Some(&good)), None);
        assert_eq!(setting_problem("mqtt", true, None), None);
        let both = setting_problem("mqtt", true, Some(&good)).unwrap();
        assert!(
            both.starts_with("mqtt.password_file: mqtt.password is set too"),
            "{both}"
        );
        let exposed = file("setting-exposed", "s3cret\n", 0o640);
        let refused = setting_problem("mqtt", false, Some(&exposed)).unwrap();
        assert!(
            refused.starts_with("mqtt.password_file: ") && refused.contains("chmod 600"),
            "{refused}"
        );
    }
}
