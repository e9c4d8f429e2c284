//! Cloud ingester: consumes Kafka into PostgreSQL and Redis, raises alerts and keeps
//! hourly statistics. The implementation arrives with its own issue; until then the binary says
//! so and fails, rather than pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!(
        "cloud-ingester {}: not implemented yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::FAILURE
}
