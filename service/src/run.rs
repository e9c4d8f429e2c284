//! What every binary's `main` does once its flags are parsed, written once so that all of
//! them behave alike: the configuration loaded (a bad one is exit code 2, naming the
//! source), `--check-config` answered, logging installed, and the service run on its
//! runtime to the end, its error reported both in the log and on stderr, where a person
//! starting it by hand looks.

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::logging::LogConfig;

/// What `main` needs of a binary's configuration beyond loading it.
pub trait Settings: Serialize + Sized {
    /// One line on what this configuration makes the binary do (`--check-config`).
    fn summary(&self) -> String;
    /// This configuration with its secrets hidden (`--check-config`).
    fn redacted(&self) -> Self;
    fn log(&self) -> &LogConfig;
}

/// The runtime a service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// One thread: the agent on the Pi is I/O bound and small, a pool would only add
    /// memory.
    CurrentThread,
    /// A thread per core: the cloud services.
    MultiThread,
}

/// Loads the configuration with `load` from `file` (none: defaults and environment),
/// then answers `--check-config` (`check_config`) or runs `service` on `runtime` until it
/// ends. Exit codes: 0 on success, 2 for a bad configuration, 1 for any other failure.
pub fn main<C, E, T, F, Fut, Failure>(
    program: &str,
    file: Option<&Path>,
    check_config: bool,
    load: impl FnOnce(Option<&Path>) -> Result<C, E>,
    runtime: Runtime,
    service: F,
) -> ExitCode
where
    C: Settings,
    E: Display,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
    Failure: Display,
{
    let source = file.map_or("defaults".to_owned(), |p| p.display().to_string());
    let config = match load(file) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{program}: {source}: {e}");
            return ExitCode::from(2);
        }
    };
    if check_config {
        return crate::config::print_check(program, &source, &config.summary(), &config.redacted());
    }
    config.log().init();
    let built = match runtime {
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service(config)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
