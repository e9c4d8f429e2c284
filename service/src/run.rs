//! The end of every service binary's `main`: a multi-threaded runtime, the service run
//! on it, and its error reported both in the log and on stderr, where a person starting
//! it by hand looks.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

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
