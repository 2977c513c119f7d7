use which::which;

/// Rebuild the eBPF object when bpf-linker changes: a new linker (for a new LLVM) changes the
/// object even when no source did.
fn main() {
    let bpf_linker = which("bpf-linker").unwrap_or_default();
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
