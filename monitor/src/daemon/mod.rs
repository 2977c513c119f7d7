//! `watch` and `check`: the event loop that attaches the probe, drains its ring buffers into
//! call sites and reports, tracks flushes that never return, and ends with the summary.

pub mod coverage;
pub mod options;
pub mod state;
pub mod stuck;
pub mod watch;
mod writer;
