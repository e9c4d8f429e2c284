//! Edge agent: samples or simulates sensors on a Raspberry Pi and delivers every reading
//! over MQTT. The implementation arrives with its own issue; until then the binary says
//! so and fails, rather than pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!(
        "edge-agent {}: not implemented yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::FAILURE
}
