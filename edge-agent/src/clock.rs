//! Whether the wall clock that stamps readings (`service::clock::now_ms`) can be trusted.
//!
//! A Pi has no real-time clock: until NTP synchronises it, it runs from the last saved
//! time (or 1970). Frames carry a flag saying which, so the cloud can tell.

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
