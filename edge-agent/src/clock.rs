//! Wall-clock time for reading timestamps, and whether that clock can be trusted.
//!
//! A Pi has no real-time clock: until NTP synchronises it, it runs from the last saved
//! time (or 1970). Frames carry a flag saying which, so the cloud can tell.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// True when the kernel reports the clock as synchronised (NTP / systemd-timesyncd).
#[cfg(target_os = "linux")]
pub fn synchronized() -> bool {
    // SAFETY: adjtimex with modes = 0 only reads the kernel's clock state into the
    // zero-initialised struct we own.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

#[cfg(not(target_os = "linux"))]
pub fn synchronized() -> bool {
    false
}
