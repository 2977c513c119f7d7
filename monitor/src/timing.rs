//! Start-up phase times on stderr when `WQFLUSH_TIMINGS` is set, for anyone asking why attaching
//! takes as long as it does on their kernel (docs/benchmark.md cites them).

use std::{sync::OnceLock, time::Instant};

static START: OnceLock<Option<Instant>> = OnceLock::new();

/// Starts the clock (call first thing in main); a no-op unless `WQFLUSH_TIMINGS` is set.
pub fn start() {
    START.get_or_init(|| std::env::var_os("WQFLUSH_TIMINGS").map(|_| Instant::now()));
}

pub fn enabled() -> bool {
    matches!(START.get(), Some(Some(_)))
}

/// Prints `wqflush: timing: <ms since start> ms <phase>` when enabled.
pub fn mark(phase: &str) {
    if let Some(Some(start)) = START.get() {
        eprintln!(
            "wqflush: timing: {:.1} ms {phase}",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}
