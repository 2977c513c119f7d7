//! The parts of wqflush that take input from outside — kallsyms text, ring buffer records, ignore
//! files — as a library, so the fuzz targets (monitor/fuzz) exercise exactly what the binary runs.

pub mod events;
pub mod ignore;
pub mod kallsyms;
