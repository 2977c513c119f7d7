//! wqflush: a probe on the workqueue flush function that reports flushes of the kernel-global
//! (`system_*`) workqueues. Every module is here; `src/main.rs` only sets up the process.
//!
//! Folders by what they hold, each importing only those below it (docs/architecture.md):
//! `cli` and `doctor` (commands) -> `daemon` (the event loop) -> `output` (records, metrics) and
//! `probe` (the eBPF object) -> `sources` (frames to source lines) and `sites` (call sites and
//! their counts) -> `symbols` (addresses to frames) -> `kernel` (read-only facts of the running
//! kernel); `interned` and `timing` are leaves any of them may use. The parsers of outside
//! input (kallsyms, ring buffer records, ignore files) are what the fuzz targets (monitor/fuzz)
//! exercise.

pub mod cli;
pub mod daemon;
pub mod doctor;
pub mod interned;
pub mod kernel;
pub mod output;
pub mod probe;
pub mod scan;
pub mod sites;
pub mod sources;
pub mod symbols;
pub mod timing;
