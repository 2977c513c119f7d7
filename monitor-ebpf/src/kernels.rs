//! Why nothing here branches on a kernel version: wqflush probes for each feature (kallsyms,
//! BTF, trying an attach). What changed in which kernel, and where wqflush handles each change,
//! is in docs/kernels.md, the project's one place for per-kernel facts; the QEMU tests prove it
//! on Debian's 5.10, 6.1, 6.12 and 7.x.
