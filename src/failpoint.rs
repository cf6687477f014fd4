//! Failpoints for crash tests: `METERBOOK_FAILPOINT=<name>` (or `<name>:<n>`, the n-th time that
//! step is reached) makes the process kill itself with SIGKILL at that step, so tests can prove
//! that a crash at any step of `run` loses nothing and sends nothing twice. Unset (always, in
//! production) it does nothing.
//!
//! Steps: `during-ingest` (after a batch of files is committed), `after-plan` (outbox rows
//! committed, not yet on S3), `before-upload` (the ledger is read and its new segments spooled,
//! nothing uploaded), `after-segments` (the segments are uploaded, the manifest not written),
//! `after-upload` (the manifest's conditional PUT succeeded, the local sync record not yet
//! written), `during-gc` (after the first segment deleted by the clean-up that follows a push),
//! and `after-send` (an answer from Clazar arrived, not yet recorded).

use std::sync::atomic::{AtomicUsize, Ordering};

/// The variable that names the failpoint.
pub const VARIABLE: &str = "METERBOOK_FAILPOINT";

static REACHED: AtomicUsize = AtomicUsize::new(0);

/// Kills the process with SIGKILL if the failpoint `name` is set (and reached its count).
pub fn hit(name: &str) {
    let Ok(wanted) = std::env::var(VARIABLE) else {
        return;
    };
    let (wanted_name, nth) = match wanted.split_once(':') {
        Some((n, count)) => (n, count.parse().unwrap_or(1)),
        None => (wanted.as_str(), 1),
    };
    if wanted_name != name || REACHED.fetch_add(1, Ordering::SeqCst) + 1 != nth {
        return;
    }
    eprintln!("meterbook: failpoint {wanted}: killing this process");
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}
