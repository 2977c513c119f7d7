//! What the running kernel offers, read once and never changed by wqflush: its symbols
//! (kallsyms, and the exported ones in its image on disk), its BTF and the struct offsets in it,
//! the system queues, the probe's target, its preemption model and the versions of its modules.
//! The lowest layer: it imports no other folder of this crate.

pub mod btf;
pub mod kallsyms;
pub mod ksymtab;
pub mod module_versions;
pub mod preemption;
pub mod queues;
pub mod target;
