//! wqflush: a probe on the workqueue flush function that reports flushes of the kernel-global
//! (`system_*`) workqueues. Every module is here; `src/main.rs` only sets up the process. The
//! parsers of outside input (kallsyms, ring buffer records, ignore files) are what the fuzz
//! targets (monitor/fuzz) exercise.

pub mod bpf_syscall;
pub mod btf;
pub mod cli;
pub mod debug_object;
pub mod debuginfo;
pub mod doctor;
pub mod events;
pub mod frame_sources;
pub mod ignore;
pub mod interned;
pub mod kallsyms;
pub mod kmsg;
pub mod kprobe_multi;
pub mod metrics;
pub mod module_versions;
pub mod preemption;
pub mod probe;
pub mod queues;
pub mod report;
pub mod sites;
pub mod source;
pub mod stuck;
pub mod symbolize;
pub mod target;
pub mod timing;
pub mod unpreempted;
pub mod watch;
