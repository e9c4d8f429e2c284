//! What every service binary's `main` does the same way: the configuration loaded (a bad
//! one is exit code 2), and at the end a multi-threaded runtime, the service run on it,
//! and its error reported both in the log and on stderr, where a person starting it by
//! hand looks.

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

/// Loads the configuration with `load` from `file` (none: the defaults and the
/// environment). Returns it with its source as the messages name it (the file, or
/// `defaults`); a bad one is told as `{program}: {source}: {error}` on stderr, and the
/// error is the exit code, 2.
pub fn load_config<T, E: Display>(
    program: &str,
    file: Option<&Path>,
    load: impl FnOnce(Option<&Path>) -> Result<T, E>,
) -> Result<(T, String), ExitCode> {
    let source = file.map_or("defaults".to_owned(), |p| p.display().to_string());
    match load(file) {
        Ok(config) => Ok((config, source)),
        Err(e) => {
            eprintln!("{program}: {source}: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Runs `service` to its end on a new multi-threaded runtime. Success exits 0; a runtime
/// that cannot start or an error exits 1, told as `{program}: {error:#}` on stderr (the
/// error is logged too).
pub fn to_exit<T, E: Display>(
    program: &str,
    service: impl Future<Output = Result<T, E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
